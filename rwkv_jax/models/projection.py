"""``x @ kernel`` whose backward pass XLA:CPU runs without transposed copies of the activations.

JAX's own gradient of ``x [..., I] @ kernel [I, O]`` with respect to the kernel is a ``dot_general`` that
contracts the leading axes of ``x`` and of the output gradient ``dy``, followed by a transpose of the result.
XLA:CPU (jax 0.10.2) folds that transpose into the operands: it writes ``dy`` (or ``x``) out again as a
transposed ``[O, B*T]`` copy, fused with whatever elementwise work produced it, a strided loop that cost more
than the product it feeds (in the Finch training step: 0.8 s of 5.7 s at vocabulary 256, and a transposed
copy of the ``[B*T, 65536]`` logits gradient at 65,536). Flattening ``x`` and ``dy`` to ``[B*T, I]`` and
``[B*T, O]`` and contracting their first axes in one ``dot_general`` gives the same kernel gradient, bit for
bit, with no copy (docs/speed.md, "Training"). The forward pass is the plain ``jnp.matmul``.
"""

import jax
import jax.numpy as jnp

from rwkv_jax.array_typing import Array


@jax.custom_vjp
def project(x: Array, kernel: Array) -> Array:
    """``x [..., I] @ kernel [I, O] -> [..., O]`` (``jnp.matmul``; both in the caller's compute dtype)."""
    return jnp.matmul(x, kernel)


def _project_forward(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return jnp.matmul(x, kernel), (x, kernel)


def project_backward(saved: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    """``dx = dy @ kernel^T``; ``dkernel = x^T dy`` over the flattened leading axes (no transposed copy),
    each in its input's dtype; ``saved`` is ``(x, kernel)`` (also the backward of
    :func:`rwkv_jax.lowp_matmul.matmul`)."""
    x, kernel = saved
    dx = jnp.matmul(dy, kernel.T)
    rows_x = x.reshape(-1, x.shape[-1])
    rows_dy = dy.reshape(-1, dy.shape[-1])
    dkernel = jax.lax.dot_general(rows_x, rows_dy, (((0,), (0,)), ((), ())))
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


project.defvjp(_project_forward, project_backward)
