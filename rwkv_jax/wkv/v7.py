"""WKV-7: the generalised delta rule of RWKV-7 "Goose" (arXiv 2503.14456).

Per head, with receptance r, key k, value v, in-context "removal" vector a and "replacement" vector b
(``[N]`` each at step t), log decay ``w_t <= 0`` per key channel and state ``S [N, N]`` indexed
``[value, key]`` (the orientation of RWKV-LM's v7 kernels)::

    S_t = S_{t-1} (diag(exp(w_t)) + a_t b_t^T) + v_t k_t^T
    y_t = S_t r_t

Unlike WKV-5/6, the output reads the state *after* the token's update and there is no bonus term (RWKV-7
adds its own ``(r . k) v`` term in the model). The model passes ``a = -kk`` and ``b = kk * iclr`` (``kk`` the
normalised key): the state forgets along ``kk`` before writing ``v k^T``.

Every form has the signature ``(r, k, v, w_log, a, b, state=None) -> (y, state)``:

- ``wkv7_reference``: float64 ``lax.scan``; the ground truth of the tests (differentiable).
- ``wkv7_recurrent``: the same step in float32; the inference form (decoding, T == 1).
- ``wkv7_chunked`` (in :mod:`rwkv_jax.wkv.v7_chunked`): chunk-wise parallel, matmuls only (the triangular
  system of each block inverted as a product of matmuls), with a hand-written backward; the training form.
- ``wkv7_scan``: ``lax.associative_scan`` over the per-token affine maps ``S -> S A_t + B_t``; composing two
  maps multiplies their ``N x N`` transitions, so it holds two ``N x N`` matrices per token and head
  (``2 B T H N^2`` float32, more under ``jax.grad``): an independent parallel form for moderate sizes.
- Pallas kernel (``pallas_kernels.wkv7``, TPU and GPU, interpret mode on CPU), reached through :func:`wkv7`
  with ``Impl.PALLAS``.
"""

import jax
import jax.numpy as jnp

from rwkv_jax.array_typing import Array
from rwkv_jax.wkv.context import matrix_transition
from rwkv_jax.wkv.forms import WKVForms, restart, with_restarts, without_chunks
from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.v7_chunked import DEFAULT_CHUNK_SIZE, check_decay_range, wkv7_chunked

__all__ = ["wkv7", "wkv7_chunked", "wkv7_recurrent", "wkv7_reference", "wkv7_scan"]


def _scan_steps(inputs: tuple[Array, ...], state: Array, starts: Array | None) -> tuple[Array, Array]:
    """One ``lax.scan`` step per token in the dtype of ``state``: ``inputs`` = (r, k, v, w_log, a, b), each
    ``[B, T, H, N]``; returns ``y [B, T, H, N]`` and the final state. ``starts [B, T]`` (or None): the state
    returns to ``state`` before a token that starts a document."""

    def step(s: Array, token: tuple[Array, ...]) -> tuple[Array, Array]:
        r_t, k_t, v_t, w_t, a_t, b_t, *start_t = token  # [B, H, N] each; start_t: [B] when given
        if start_t:
            s = restart(start_t[0], state, s)
        s_a = jnp.einsum("bhvk,bhk->bhv", s, a_t)
        s = s * jnp.exp(w_t)[..., None, :] + s_a[..., :, None] * b_t[..., None, :]
        s = s + v_t[..., :, None] * k_t[..., None, :]
        return s, jnp.einsum("bhvk,bhk->bhv", s, r_t)

    time_major = tuple(jnp.swapaxes(x, 0, 1).astype(state.dtype) for x in inputs)
    if starts is not None:
        time_major += (jnp.swapaxes(starts, 0, 1),)
    final, ys = jax.lax.scan(step, state, time_major)
    return jnp.swapaxes(ys, 0, 1), final


@jax.jit
def wkv7_reference(
    r: Array,
    k: Array,
    v: Array,
    w_log: Array,
    a: Array,
    b: Array,
    state: Array | None = None,
    starts: Array | None = None,
) -> tuple[Array, Array]:
    """Float64 ground truth: the recurrence step by step. Needs ``jax_enable_x64``.

    Args:
      r, k, v: ``[B, T, H, N]`` receptance, key, value (any float dtype).
      w_log: ``[B, T, H, N]`` log of the per-step decay, ``<= 0``.
      a, b: ``[B, T, H, N]`` the state's rank-one update ``S a b^T`` (the model's ``-kk`` and ``kk * iclr``).
      state: ``[B, H, N, N]`` initial state ``[value, key]``, or None for zeros.
      starts: ``[B, T]`` bool, or None: the state returns to ``state`` before a token that starts a
        document (packed samples; see :mod:`rwkv_jax.wkv.forms`).

    Returns:
      ``y [B, T, H, N]`` and the final state ``[B, H, N, N]``, both float64.
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError("wkv7_reference computes in float64: enable it with jax_enable_x64 first")
    initial = WKV7_FORMS.initial_state(state, (r, k, v, w_log, a, b), jnp.float64)
    return _scan_steps((r, k, v, w_log, a, b), initial, starts)


@jax.jit
def wkv7_recurrent(
    r: Array,
    k: Array,
    v: Array,
    w_log: Array,
    a: Array,
    b: Array,
    state: Array | None = None,
    starts: Array | None = None,
) -> tuple[Array, Array]:
    """One ``lax.scan`` step per token, float32 state and accumulation.

    Shapes as in :func:`wkv7_reference`; returns ``y`` in ``v.dtype`` and the float32 final state.
    """
    initial = WKV7_FORMS.initial_state(state, (r, k, v, w_log, a, b))
    y, final = _scan_steps((r, k, v, w_log, a, b), initial, starts)
    return y.astype(v.dtype), final


@jax.jit
def wkv7_scan(
    r: Array,
    k: Array,
    v: Array,
    w_log: Array,
    a: Array,
    b: Array,
    state: Array | None = None,
    starts: Array | None = None,
) -> tuple[Array, Array]:
    """Parallel form: ``lax.associative_scan`` over the per-token maps ``S -> S A_t + B_t``.

    ``A_t = diag(exp(w_t)) + a_t b_t^T`` (``[key, key]``) and ``B_t = v_t k_t^T`` (``[value, key]``);
    "a then b" is ``(A_a A_b, B_a A_b + B_b)``. The initial state is folded into the first token's ``B``, and
    with ``starts`` into the ``B`` of every document's first token, flagged so that composing discards the
    maps before it (:func:`~rwkv_jax.wkv.forms.with_restarts`). Memory ``2 B T H N^2`` float32 (see the
    module docstring). Shapes as in :func:`wkv7_reference`; returns ``y`` in ``v.dtype`` and the float32
    final state.
    """
    f32, out_dtype = jnp.float32, v.dtype
    state = WKV7_FORMS.initial_state(state, (r, k, v, w_log, a, b))
    r, k, v, w_log, a, b = (x.astype(f32) for x in (r, k, v, w_log, a, b))
    size = r.shape[-1]
    transition = jnp.exp(w_log)[..., None] * jnp.eye(size, dtype=f32) + a[..., :, None] * b[..., None, :]
    written = v[..., :, None] * k[..., None, :]  # [B, T, H, value, key]

    def compose(first: tuple[Array, Array], then: tuple[Array, Array]) -> tuple[Array, Array]:
        (a_1, b_1), (a_2, b_2) = first, then
        return a_1 @ a_2, b_1 @ a_2 + b_2

    if starts is None:
        written = written.at[:, 0].add(state @ transition[:, 0])
        _, states = jax.lax.associative_scan(compose, (transition, written), axis=1)
    else:
        starts = starts.at[:, 0].set(True)  # the first token starts from the initial state too
        written = restart(starts, written + state[:, None] @ transition, written)
        maps = ((transition, written), starts)
        (_, states), _ = jax.lax.associative_scan(with_restarts(compose), maps, axis=1)
    y = jnp.einsum("bthvk,bthk->bthv", states, r)
    return y.astype(out_dtype), states[:, -1]


# Tokens per grid step of the Pallas form when the call gives none: 32, as before the chunked form's default
# moved to 16 (docs/wkv_training_speed.md, sixth pass); the kernel has not been timed at 16 on hardware.
PALLAS_CHUNK_SIZE = 32


def _wkv7_pallas(*args: Array | None, chunk_size: int, starts: Array | None = None) -> tuple[Array, Array]:
    """The Pallas kernel (``pallas_kernels.wkv7``; interpret mode on CPU), imported only when chosen.
    ``args``: ``r, k, v, w_log, a, b, state`` as in :func:`wkv7`."""
    from pallas_kernels.wkv7 import wkv7 as pallas_wkv7

    r, k, v, w_log, a, b, state = args
    interpret = jax.default_backend() == "cpu"
    w_log, state = w_log.astype(jnp.float32), None if state is None else state.astype(jnp.float32)
    return pallas_wkv7(r, k, v, w_log, a, b, state, starts=starts, chunk_size=chunk_size, interpret=interpret)


def wkv7(
    r: Array,
    k: Array,
    v: Array,
    w_log: Array,
    a: Array,
    b: Array,
    state: Array | None = None,
    *,
    impl: Impl | str = Impl.AUTO,
    chunk_size: int | None = None,
    starts: Array | None = None,
) -> tuple[Array, Array]:
    """WKV-7 in the form ``impl`` (AUTO: RECURRENT for T == 1, else CHUNKED; see :mod:`rwkv_jax.wkv.forms`).

    Args:
      r, k, v, w_log, a, b: ``[B, T, H, N]`` (float32 or bfloat16; accumulation is float32); ``w_log <= 0``
        (checked when not traced).
      state: ``[B, H, N, N]`` float32 initial state ``[value, key]``, or None for zeros.
      impl: the form, an :class:`Impl` or its name.
      chunk_size: tokens per chunk of the CHUNKED form, per grid step of the PALLAS form (a power of 2,
        >= 16, for that one); None: the form's own default (``WKV7_FORMS.chunk_size_of``: CHUNKED
        :data:`~rwkv_jax.wkv.v7_chunked.DEFAULT_CHUNK_SIZE`, PALLAS :data:`PALLAS_CHUNK_SIZE`).
      starts: ``[B, T]`` bool document-start mask, or None (forms that take it: ``WKV7_FORMS.takes_starts``;
        AUTO picks RECURRENT where CHUNKED would not).

    Returns:
      ``y [B, T, H, N]`` in ``v.dtype`` and the final float32 state ``[B, H, N, N]``.
    """
    return WKV7_FORMS(r, k, v, w_log, a, b, state=state, impl=impl, chunk_size=chunk_size, starts=starts)


def _check_chunk_decay(inputs: dict[str, Array], impl: Impl, chunk_size: int) -> None:
    """The chunked form's exponents are referenced to the chunk start: bound the decay per chunk."""
    if impl is Impl.CHUNKED:
        check_decay_range(inputs["w_log"], chunk_size)


WKV7_FORMS = WKVForms(
    name="WKV-7",
    inputs=tuple((name, "BTHN") for name in ("r", "k", "v", "w_log", "a", "b")),
    state=("BHNN",),
    state_names=("state",),
    empty_state=lambda sizes: jnp.zeros((sizes["B"], sizes["H"], sizes["N"], sizes["N"]), jnp.float32),
    forms={
        Impl.RECURRENT: without_chunks(wkv7_recurrent),
        Impl.SCAN: without_chunks(wkv7_scan),
        Impl.CHUNKED: wkv7_chunked,
        Impl.PALLAS: _wkv7_pallas,
    },
    reference=wkv7_reference,
    takes_starts=frozenset({Impl.RECURRENT, Impl.SCAN, Impl.CHUNKED, Impl.PALLAS}),
    auto_cpu=Impl.CHUNKED,
    auto_accelerated=Impl.CHUNKED,
    default_chunk_size=DEFAULT_CHUNK_SIZE,
    form_chunk_sizes={Impl.PALLAS: PALLAS_CHUNK_SIZE},
    context=matrix_transition(value_index=2),
    check_values=_check_chunk_decay,
)
