"""``x @ w`` with float32 ``x`` and bfloat16 / float16 ``w`` that reads ``w`` at 2 bytes a weight on CPU.

XLA:CPU (jax 0.10.2) converts a whole 16-bit weight to float32 in a fresh buffer before every product, so a
decode step with bfloat16 weights ran 8x slower than with float32 ones, and no XLA formulation found reads
them faster than float32 (docs/speed.md, "bfloat16 weights on this CPU"). A decode step is a few rows of
activations times every weight: it is bound by the bytes it reads. :func:`matmul` runs the product as an
XLA FFI custom call (``rwkv_jax/native/lowp_matmul.cc``) that widens the weights in registers or block by
block in cache, on XLA's own thread pool: a decode step reads half the bytes of a float32 one, and a
prompt's product runs near XLA's float32 speed without a float32 copy of the weights. The kernel is compiled
for the host's CPU on first use (:mod:`rwkv_jax.native.build`). :func:`applies` says where a caller can use
it: float32 ``x`` and 16-bit ``w`` on the CPU, where the kernel could be built (a C++ compiler, not
``RWKV_JAX_NATIVE=0``, a CPU with FMA vectors); elsewhere the caller computes ``x @ w.astype(float32)`` in
XLA, the same numbers.

Numerics: the products and sums are float32, as XLA's; the order of the sums differs (relative error of
the output ~1e-7 against a float64 product, tests/test_lowp_matmul.py).
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.array_typing import Array
from rwkv_jax.models.projection import project_backward
from rwkv_jax.native import build

TARGET = "rwkv_jax_lowp_matmul"
FORMATS = {np.dtype(jnp.bfloat16): 1, np.dtype(jnp.float16): 2}  # the kernel's bits for its fast formats

log = logging.getLogger(__name__)


@functools.cache
def _fast_formats() -> int:
    """The kernel's fast formats (bits of :data:`FORMATS`), registering it with XLA on first call; 0 when
    it cannot be built or loaded here (the reason is logged once)."""
    try:
        library = build.load("lowp_matmul")
    except build.BuildError as error:
        log.warning("rwkv_jax: 16-bit weights decode through XLA's float32 product on CPU: %s", error)
        return 0
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.LowpMatmul), platform="cpu")
    return library.LowpMatmulFastFormats()


def available(dtype: jnp.dtype) -> bool:
    """Whether the kernel multiplies weights of ``dtype`` here, faster than XLA's float32 product (builds
    it on first call)."""
    bit = FORMATS.get(np.dtype(dtype))
    return bit is not None and jax.default_backend() == "cpu" and bool(_fast_formats() & bit)


def applies(x: Array, w: Array) -> bool:
    """Whether :func:`matmul` runs the kernel for ``x [..., K]`` and ``w [K, N]``: float32 ``x``, and ``w``
    of a dtype the kernel multiplies here (:func:`available`)."""
    return np.dtype(x.dtype) == np.float32 and available(w.dtype)


def matmul(x: Array, w: Array) -> Array:
    """``x [..., K] float32 @ w [K, N] bfloat16 / float16 -> [..., N] float32`` by the kernel, where
    :func:`applies` (differentiable: the gradients are XLA's float32 ones, the weight's in its own dtype)."""
    if np.ndim(w) != 2 or np.ndim(x) < 1 or np.shape(x)[-1] != np.shape(w)[0]:
        raise ValueError(f"matmul needs x [..., K] and w [K, N], got {np.shape(x)} and {np.shape(w)}")
    if not applies(x, w):
        raise ValueError(
            f"the kernel does not apply to x {np.dtype(x.dtype)} and w {np.dtype(w.dtype)} here: it needs "
            "float32 x and bfloat16 / float16 w, on a CPU where it builds"
        )
    return _kernel(x, w)


@jax.custom_vjp
def _kernel(x: Array, w: Array) -> Array:
    rows = x.reshape(-1, x.shape[-1])
    shape = jax.ShapeDtypeStruct((rows.shape[0], w.shape[1]), jnp.float32)
    y = jax.ffi.ffi_call(TARGET, shape, vmap_method="sequential")(rows, w)
    return y.reshape(*x.shape[:-1], w.shape[1])


def _kernel_forward(x: Array, w: Array) -> tuple[Array, tuple[Array, Array]]:
    return _kernel(x, w), (x, w)


_kernel.defvjp(_kernel_forward, project_backward)  # XLA's float32 gradients
