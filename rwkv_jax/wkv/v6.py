"""WKV-5/6: the matrix-valued-state recurrence of Eagle (RWKV-5) and Finch (RWKV-6) (arXiv 2404.05892).

Per head, with receptance r, key k, value v (``[N]`` each at step t), log decay ``w_t <= 0`` per key
channel, bonus u ``[N]`` and state ``S [N, N]`` indexed ``[key, value]``::

    y_t[j] = sum_i r_t[i] (u[i] k_t[i] v_t[j] + S[i, j])
    S[i, j] <- exp(w_t[i]) S[i, j] + k_t[i] v_t[j]

Finch's decay depends on the token (``w_t = -exp(w_dynamic_t)``); Eagle's is the constant
``-exp(time_decay)`` broadcast over time, so both models share this module.

Every form has the signature ``(r, k, v, w_log, u, state=None) -> (y, state)``:

- ``wkv6_reference``: float64 ``lax.scan``; the ground truth of the tests (differentiable).
- ``wkv6_recurrent``: the same step in float32; the inference form (decoding, T == 1).
- ``wkv6_scan``: ``lax.associative_scan`` over (log decay, state) pairs. It materialises one ``N x N``
  state per token and head, i.e. ``B * T * H * N * N`` float32 (537 MB for T=4096, H=8, N=64, B=1, and
  several times that under ``jax.grad``), so it is practical only for moderate ``T * H * N**2``; it
  exists as an independent parallel form to check the others against.
- ``wkv6_chunked`` (in :mod:`rwkv_jax.wkv.v6_chunked`): chunk-wise parallel, the training form.
- Pallas kernel (``pallas_kernels.wkv6``), reached through :func:`wkv6` with ``Impl.PALLAS``.
"""

import jax
import jax.numpy as jnp

from rwkv_jax.array_typing import Array
from rwkv_jax.wkv.context import diagonal_transition
from rwkv_jax.wkv.forms import Form, WKVForms, restart, with_restarts, without_chunks
from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.v6_chunked import DEFAULT_CHUNK_SIZE, wkv6_chunked

__all__ = [
    "wkv6",
    "wkv6_chunked",
    "wkv6_recurrent",
    "wkv6_reference",
    "wkv6_scan",
]


def _scan_steps(
    r: Array, k: Array, v: Array, w_log: Array, u: Array, state: Array, starts: Array | None
) -> tuple[Array, Array]:
    """One ``lax.scan`` step per token, in the dtype of ``state``; returns ``y [B, T, H, N]`` and S_T.

    ``starts [B, T]`` (or None): the state returns to ``state`` before a token that starts a document."""
    dtype = state.dtype
    u = u.astype(dtype)[:, :, None]  # [H, N(key), 1]

    def step(s: Array, inputs: tuple[Array, ...]) -> tuple[Array, Array]:
        r_t, k_t, v_t, w_t, *start_t = inputs  # [B, H, N] each; start_t: [B] when given
        if start_t:
            s = restart(start_t[0], state, s)
        kv = k_t[..., :, None] * v_t[..., None, :]  # [B, H, key, value]
        y_t = jnp.einsum("bhi,bhij->bhj", r_t, u * kv + s)
        return jnp.exp(w_t)[..., None] * s + kv, y_t

    time_major = tuple(jnp.swapaxes(x, 0, 1).astype(dtype) for x in (r, k, v, w_log))
    if starts is not None:
        time_major += (jnp.swapaxes(starts, 0, 1),)
    final, ys = jax.lax.scan(step, state, time_major)
    return jnp.swapaxes(ys, 0, 1), final


@jax.jit
def wkv6_reference(
    r: Array,
    k: Array,
    v: Array,
    w_log: Array,
    u: Array,
    state: Array | None = None,
    starts: Array | None = None,
) -> tuple[Array, Array]:
    """Float64 ground truth: the recurrence step by step. Needs ``jax_enable_x64``.

    Args:
      r, k, v: ``[B, T, H, N]`` receptance, key, value (any float dtype).
      w_log: ``[B, T, H, N]`` log of the per-step decay, ``<= 0``.
      u: ``[H, N]`` bonus of the current token.
      state: ``[B, H, N, N]`` initial state ``[key, value]``, or None for zeros.
      starts: ``[B, T]`` bool, or None: the state returns to ``state`` before a token that starts a
        document (packed samples; see :mod:`rwkv_jax.wkv.forms`).

    Returns:
      ``y [B, T, H, N]`` and the final state ``[B, H, N, N]``, both float64.
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError("wkv6_reference computes in float64: enable it with jax_enable_x64 first")
    initial = WKV6_FORMS.initial_state(state, (r, k, v, w_log, u), jnp.float64)
    return _scan_steps(r, k, v, w_log, u, initial, starts)


@jax.jit
def wkv6_recurrent(
    r: Array,
    k: Array,
    v: Array,
    w_log: Array,
    u: Array,
    state: Array | None = None,
    starts: Array | None = None,
) -> tuple[Array, Array]:
    """The inference form: one ``lax.scan`` step per token, float32 state and accumulation.

    Shapes as in :func:`wkv6_reference`; returns ``y`` in ``v.dtype`` and the float32 final state.
    """
    y, final = _scan_steps(r, k, v, w_log, u, WKV6_FORMS.initial_state(state, (r, k, v, w_log, u)), starts)
    return y.astype(v.dtype), final


@jax.jit
def wkv6_scan(
    r: Array,
    k: Array,
    v: Array,
    w_log: Array,
    u: Array,
    state: Array | None = None,
    starts: Array | None = None,
) -> tuple[Array, Array]:
    """Parallel form: ``lax.associative_scan`` over per-token affine maps of the state.

    Token t is the map ``S -> exp(w_t) S + k_t v_t^T``, held as the pair (``w_t [N]``, ``k_t v_t^T [N, N]``).
    Composing "a then b" gives ``(w_a + w_b, exp(w_b) S_a + S_b)``: every exponent is a sum of log decays,
    so it stays ``<= 0``. Memory is ``B * T * H * N * N`` float32 (see the module docstring). With
    ``starts``, a document's first token is the constant map to its image of the initial state, flagged so
    that composing discards everything before it (:func:`~rwkv_jax.wkv.forms.with_restarts`).
    Shapes as in :func:`wkv6_reference`; returns ``y`` in ``v.dtype`` and the float32 final state.
    """
    f32, out_dtype = jnp.float32, v.dtype
    state = WKV6_FORMS.initial_state(state, (r, k, v, w_log, u))
    r, k, v, w_log = (x.astype(f32) for x in (r, k, v, w_log))
    kv = k[..., :, None] * v[..., None, :]  # [B, T, H, key, value]

    def compose(a: tuple[Array, Array], b: tuple[Array, Array]) -> tuple[Array, Array]:
        (w_a, s_a), (w_b, s_b) = a, b
        return w_a + w_b, jnp.exp(w_b)[..., None] * s_a + s_b

    if starts is None:
        # Fold the initial state into the first token's map so that the scan yields S_t, the state after t.
        first = jnp.exp(w_log[:, 0])[..., None] * state + kv[:, 0]
        _, states_after = jax.lax.associative_scan(compose, (w_log, kv.at[:, 0].set(first)), axis=1)
        states_before = jnp.concatenate([state[:, None], states_after[:, :-1]], axis=1)
    else:
        starts = starts.at[:, 0].set(True)  # the first token reads the initial state too
        from_initial = jnp.exp(w_log)[..., None] * state[:, None] + kv
        maps = (w_log, restart(starts, from_initial, kv))
        (_, states_after), _ = jax.lax.associative_scan(with_restarts(compose), (maps, starts), axis=1)
        shifted = jnp.concatenate([state[:, None], states_after[:, :-1]], axis=1)
        states_before = restart(starts, jnp.broadcast_to(state[:, None], shifted.shape), shifted)
    bonus = u.astype(f32)[:, :, None] * kv
    y = jnp.einsum("bthi,bthij->bthj", r, bonus + states_before)
    return y.astype(out_dtype), states_after[:, -1]


def _with_starts(form: Form) -> Form:
    """``form`` (chunked or Pallas, both of which allow ``w_log = -inf``) with ``starts``, by linearity: the
    state is an affine function of the state at the last document start, so ``form`` runs with a decay of
    exactly 0 (``w_log = -inf``) at each start (token p's decay acts on the state before p when forming the
    state after p), giving every later token of a document the contribution of the document's own tokens,
    and the initial state's part is added: ``r_t . (exp(W_t) * state)`` with ``W_t`` the log decays summed
    from the document's start p to ``t - 1`` (a segmented sum, never a difference of sums), ``<= 0``. A start
    token itself reads the state before it, so its output is rebuilt: its bonus plus ``r_p . state``."""

    def run(
        r: Array, k: Array, v: Array, w_log: Array, u: Array, state: Array | None, *, chunk_size: int,
        starts: Array | None = None,
    ) -> tuple[Array, Array]:  # fmt: skip
        if starts is None:
            return form(r, k, v, w_log, u, state, chunk_size=chunk_size)
        return _restarted(form, (r, k, v, w_log, u), state, chunk_size, starts)

    return run


def _restarted(
    form: Form, inputs: tuple[Array, ...], state: Array | None, chunk_size: int, starts: Array
) -> tuple[Array, Array]:
    """See :func:`_with_starts`."""
    r, k, v, w_log, u = inputs
    state = WKV6_FORMS.initial_state(state, inputs)
    f32, out_dtype = jnp.float32, v.dtype
    r, k, v, w_log = (x.astype(f32) for x in (r, k, v, w_log))
    at_start = starts[..., None, None]
    y, final = form(r, k, v, jnp.where(at_start, -jnp.inf, w_log), u, state, chunk_size=chunk_size)

    def add(a: tuple[Array], b: tuple[Array]) -> tuple[Array]:
        return (a[0] + b[0],)

    (through,), _ = jax.lax.associative_scan(with_restarts(add), ((w_log,), starts), axis=1)
    after_start = jnp.cumsum(starts, axis=1) > 0  # [B, T]: in a document that starts in this call
    # Decay from the document's start to t - 1: 0 at a start, else the sum through t - 1.
    before = jnp.concatenate([jnp.zeros_like(through[:, :1]), through[:, :-1]], axis=1)
    before = jnp.where(at_start, 0.0, before)
    from_state = jnp.einsum("bthi,bhij->bthj", r * jnp.exp(before), state)
    bonus = jnp.sum(r * u.astype(f32) * k, axis=-1, keepdims=True) * v
    y = jnp.where(at_start, bonus + from_state, y + jnp.where(after_start[..., None, None], from_state, 0.0))
    last = jnp.where(after_start[:, -1, None, None], jnp.exp(through[:, -1]), 0.0)  # [B, H, N]
    return y.astype(out_dtype), final + last[..., None] * state


def _wkv6_pallas(
    r: Array, k: Array, v: Array, w_log: Array, u: Array, state: Array | None, *, chunk_size: int
) -> tuple[Array, Array]:
    """The Pallas kernel (``pallas_kernels.wkv6``; interpret mode on CPU), imported only when chosen."""
    from pallas_kernels.wkv6 import wkv6 as pallas_wkv6

    interpret = jax.default_backend() == "cpu"
    w_log, state = w_log.astype(jnp.float32), None if state is None else state.astype(jnp.float32)
    return pallas_wkv6(r, k, v, w_log, u, state, chunk_size=chunk_size, interpret=interpret)


def wkv6(
    r: Array,
    k: Array,
    v: Array,
    w_log: Array,
    u: Array,
    state: Array | None = None,
    *,
    impl: Impl | str = Impl.AUTO,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    starts: Array | None = None,
) -> tuple[Array, Array]:
    """WKV-5/6 in the form ``impl`` (AUTO: RECURRENT for T == 1, else CHUNKED; see :mod:`rwkv_jax.wkv.forms`).

    Args:
      r, k, v: ``[B, T, H, N]`` receptance, key, value (float32 or bfloat16; accumulation is float32).
      w_log: ``[B, T, H, N]`` log of the per-step decay, ``<= 0`` (checked when not traced).
      u: ``[H, N]`` bonus of the current token.
      state: ``[B, H, N, N]`` float32 initial state ``[key, value]``, or None for zeros.
      impl: the form, an :class:`Impl` or its name.
      chunk_size: tokens per chunk of the CHUNKED and PALLAS forms.
      starts: ``[B, T]`` bool document-start mask, or None (forms that take it: ``WKV6_FORMS.takes_starts``;
        AUTO picks RECURRENT where PALLAS would not).

    Returns:
      ``y [B, T, H, N]`` in ``v.dtype`` and the final float32 state ``[B, H, N, N]``.
    """
    return WKV6_FORMS(r, k, v, w_log, u, state=state, impl=impl, chunk_size=chunk_size, starts=starts)


WKV6_FORMS = WKVForms(
    name="WKV-6",
    inputs=(("r", "BTHN"), ("k", "BTHN"), ("v", "BTHN"), ("w_log", "BTHN"), ("u", "HN")),
    state=("BHNN",),
    state_names=("state",),
    empty_state=lambda sizes: jnp.zeros((sizes["B"], sizes["H"], sizes["N"], sizes["N"]), jnp.float32),
    forms={
        Impl.RECURRENT: without_chunks(wkv6_recurrent),
        Impl.SCAN: without_chunks(wkv6_scan),
        Impl.CHUNKED: _with_starts(wkv6_chunked),
        Impl.PALLAS: _with_starts(_wkv6_pallas),
    },
    reference=wkv6_reference,
    takes_starts=frozenset({Impl.RECURRENT, Impl.SCAN, Impl.CHUNKED, Impl.PALLAS}),
    auto_cpu=Impl.CHUNKED,
    auto_accelerated=Impl.CHUNKED,
    default_chunk_size=DEFAULT_CHUNK_SIZE,
    context=diagonal_transition(decay_log_index=3),
)
