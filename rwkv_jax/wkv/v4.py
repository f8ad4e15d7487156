"""WKV-4: the per-channel time-mixing recurrence of RWKV-4 (arXiv 2305.13048).

For each channel, with log decay ``w <= 0`` and bonus ``u``::

    y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (same with v = 1)

State is the numerically stable triple of the official kernels: ``num`` and ``den`` scaled by
``e^{-max_exp}``, and the running maximum exponent ``max_exp``. All three are float32 ``[B, C]``. The state
*means* the pair ``(num, den) * e^{max_exp}``; ``max_exp`` is only the scale it is stored at.

Forms (one signature, see :func:`wkv4`): :func:`wkv4_recurrent` (``lax.scan``), :func:`wkv4_scan`
(``lax.associative_scan``), the Pallas kernel in ``pallas_kernels.wkv4``, and the float64
:func:`wkv4_reference` that the tests hold the others to.

Every token applies the affine map ``S -> e^w S + e^{k} (v, 1)`` to ``S = (num, den) * e^{max_exp}``. The
associative form composes such maps in log space (:func:`_then`); the recurrent form applies them one at a
time (:func:`_absorb_token`) with the exponent kept as a compensated sum, so that decays near 1 do not drift
over long sequences. Both keep the running maximum exponent, so nothing overflows for large ``|k|``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rwkv_jax.array_typing import Array
from rwkv_jax.wkv.forms import WKVForms, restart, with_restarts, without_chunks
from rwkv_jax.wkv.impl import Impl

# The official CUDA kernel starts the running max at -1e38 ("MIN_VALUE"); the rwkv package uses -1e30.
# Any very negative value gives the same result: e^{max_exp - p} underflows to 0 on the first step.
INITIAL_MAX_EXP = -1e38


class WKV4State(NamedTuple):
    """num, den: ``[B, C]`` float32, scaled by ``e^{-max_exp}``; max_exp: ``[B, C]`` float32."""

    num: Array
    den: Array
    max_exp: Array

    @classmethod
    def zeros(cls, batch_size: int, channels: int) -> "WKV4State":
        zero = jnp.zeros((batch_size, channels), jnp.float32)
        return cls(zero, zero, jnp.full((batch_size, channels), INITIAL_MAX_EXP, jnp.float32))


class _Affine(NamedTuple):
    """The map ``S -> e^{log_decay} S + e^{max_exp} (num, den)`` on unscaled states ``S = (N, D)``.

    A state is the map's offset (what it makes of the zero state); a token is ``(w, k, v, 1)``.
    """

    log_decay: Array
    max_exp: Array
    num: Array
    den: Array


def _then(first: _Affine, second: _Affine) -> _Affine:
    """The map ``second(first(S))``, its offset rescaled to the larger of the two exponents.

    Exponent differences are taken before the (possibly tiny) log decay is added: with ``max_exp ~ 60``
    and ``w ~ -1e-6``, ``max_exp + w`` rounds to ``max_exp`` in float32 and the decay would be lost.
    """
    max_exp = jnp.maximum(first.max_exp + second.log_decay, second.max_exp)
    scale_first = jnp.exp((first.max_exp - max_exp) + second.log_decay)
    scale_second = jnp.exp(second.max_exp - max_exp)
    return _Affine(
        first.log_decay + second.log_decay,
        max_exp,
        scale_first * first.num + scale_second * second.num,
        scale_first * first.den + scale_second * second.den,
    )


def _output(u: Array, k: Array, v: Array, before: WKV4State, low: Array | float = 0.0) -> Array:
    """``y`` for tokens ``(k, v)`` read against the state ``before`` them (all broadcastable, float32).

    ``low`` is a small correction to ``before.max_exp`` (see :func:`_absorb_token`).
    """
    max_exp = jnp.maximum(before.max_exp, u + k)
    scale_state = jnp.exp((before.max_exp - max_exp) + low)
    scale_token = jnp.exp((k - max_exp) + u)
    return (scale_state * before.num + scale_token * v) / (scale_state * before.den + scale_token)


def _absorb_token(w_log: Array, k: Array, v: Array, state: WKV4State, low: Array) -> tuple[WKV4State, Array]:
    """The state after token ``(k, v)``, its scale exponent carried as the compensated sum ``max_exp + low``.

    Decaying ``num`` by the float32 factor ``e^w`` (``w ~ -1e-6``) rounds the same way at every step, and so
    does ``max_exp + w``: over 4096 steps either drifts by ~1e-4. So the decay goes into the exponent and
    ``low`` keeps what float32 ``max_exp + w`` loses (Kahan summation); ``num`` and ``den`` are rescaled only
    when the token raises the maximum.
    """
    decay = w_log + low
    decayed_max = state.max_exp + decay
    max_exp = jnp.maximum(decayed_max, k)
    rest = (state.max_exp - max_exp) + decay  # the state's exponent beyond max_exp, without cancellation
    state_wins = decayed_max >= k
    low = jnp.where(state_wins, rest, 0.0)
    scale_state = jnp.where(state_wins, 1.0, jnp.exp(rest))
    scale_token = jnp.exp((k - max_exp) - low)
    new = WKV4State(scale_state * state.num + scale_token * v, scale_state * state.den + scale_token, max_exp)
    return new, low


def wkv4_recurrent(
    w_log: Array, u: Array, k: Array, v: Array, state: WKV4State | None = None, starts: Array | None = None
) -> tuple[Array, WKV4State]:
    """One ``lax.scan`` step per token: the inference form.

    Args:
      w_log: ``[C]`` log decay (``-exp(time_decay)``), float32, ``<= 0``.
      u: ``[C]`` bonus for the current token (``time_first``).
      k, v: ``[B, T, C]`` keys and values (any float dtype; computed in float32).
      state: initial :class:`WKV4State`, or None for the empty state.
      starts: ``[B, T]`` bool, or None: the state returns to ``state`` before a token that starts a
        document (packed samples; see :mod:`rwkv_jax.wkv.forms`).

    Returns:
      ``y [B, T, C]`` in ``v.dtype`` and the final state.
    """
    initial = WKV4_FORMS.initial_state(state, (w_log, u, k, v))
    w_log = w_log.astype(jnp.float32)
    u = u.astype(jnp.float32)

    def step(carry: tuple[WKV4State, Array], kv: tuple[Array, ...]) -> tuple[tuple[WKV4State, Array], Array]:
        state, low = carry
        k_t, v_t, *start_t = kv  # start_t: [B] when given
        if start_t:
            state, low = restart(start_t[0], (initial, jnp.zeros_like(low)), (state, low))
        y = _output(u, k_t, v_t, state, low)
        return _absorb_token(w_log, k_t, v_t, state, low), y

    xs = (jnp.swapaxes(k, 0, 1).astype(jnp.float32), jnp.swapaxes(v, 0, 1).astype(jnp.float32))
    if starts is not None:
        xs += (jnp.swapaxes(starts, 0, 1),)
    (final, low), ys = jax.lax.scan(step, (initial, jnp.zeros_like(initial.max_exp)), xs)
    final = WKV4State(final.num * jnp.exp(low), final.den * jnp.exp(low), final.max_exp)
    return jnp.swapaxes(ys, 0, 1).astype(v.dtype), final


def wkv4_scan(
    w_log: Array, u: Array, k: Array, v: Array, state: WKV4State | None = None, starts: Array | None = None
) -> tuple[Array, WKV4State]:
    """``lax.associative_scan`` over the per-token affine maps: the parallel form (depth ``O(log T)``).

    The initial state is element 0 of the scan, so prefix ``t`` is the state after ``t`` tokens; ``max_exp``
    of every prefix is the running maximum of the recurrent form, so the final triple equals
    :func:`wkv4_recurrent`'s up to rounding. With ``starts``, a document's first token is the map from the
    initial state through that token, flagged so that composing discards the maps before it
    (:func:`~rwkv_jax.wkv.forms.with_restarts`). Same arguments and results as :func:`wkv4_recurrent`.
    """
    state = WKV4_FORMS.initial_state(state, (w_log, u, k, v))
    batch, length, channels = k.shape
    k32, v32 = k.astype(jnp.float32), v.astype(jnp.float32)

    def with_state_first(initial: Array, tokens: Array) -> Array:
        return jnp.concatenate([initial[:, None, :], tokens], axis=1)

    maps = _Affine(
        jnp.broadcast_to(w_log.astype(jnp.float32), (batch, length + 1, channels)),
        with_state_first(state.max_exp, k32),
        with_state_first(state.num, v32),
        with_state_first(state.den, jnp.ones_like(k32)),
    )
    if starts is None:
        prefix = jax.lax.associative_scan(_then, maps, axis=1)
    else:
        restarts = jnp.concatenate([jnp.zeros((batch, 1), bool), starts], axis=1)  # element 0: the state
        initial = jax.tree.map(lambda x: x[:, :1], maps)
        maps = restart(restarts, _then(initial, maps), maps)
        prefix, _ = jax.lax.associative_scan(with_restarts(_then), (maps, restarts), axis=1)
    before = WKV4State(prefix.num[:, :-1], prefix.den[:, :-1], prefix.max_exp[:, :-1])
    if starts is not None:
        first = jax.tree.map(lambda x: jnp.broadcast_to(x[:, None], before.num.shape), state)
        before = restart(starts, first, before)
    y = _output(u.astype(jnp.float32), k32, v32, before)
    return y.astype(v.dtype), WKV4State(prefix.num[:, -1], prefix.den[:, -1], prefix.max_exp[:, -1])


def _wkv4_pallas(
    w_log: Array, u: Array, k: Array, v: Array, state: WKV4State | None, starts: Array | None = None
) -> tuple[Array, WKV4State]:
    """The Pallas kernel (``pallas_kernels.wkv4``; interpret mode on CPU), imported only when chosen."""
    from pallas_kernels import wkv4 as kernel

    y, final = kernel.wkv4(w_log, u, k, v, state, starts=starts, interpret=jax.default_backend() == "cpu")
    return y, WKV4State(*final)


def wkv4(
    w_log: Array,
    u: Array,
    k: Array,
    v: Array,
    state: WKV4State | None = None,
    *,
    impl: Impl | str = Impl.AUTO,
    starts: Array | None = None,
) -> tuple[Array, WKV4State]:
    """WKV-4 in the form ``impl`` picks (AUTO: RECURRENT on CPU and for one token, SCAN on GPU/TPU).

    Args:
      w_log: ``[C]`` log decay (``-exp(time_decay)``), float32, ``<= 0``.
      u: ``[C]`` bonus for the current token (``time_first``).
      k, v: ``[B, T, C]`` keys and values, float32 or bfloat16 (computed in float32).
      state: initial :class:`WKV4State` (``[B, C]`` float32 each), or None for the empty state.
      impl: RECURRENT, SCAN, PALLAS (interpret mode on CPU) or AUTO.
      starts: ``[B, T]`` bool document-start mask, or None (every form takes it).

    Returns:
      ``y [B, T, C]`` in ``v.dtype`` and the final :class:`WKV4State`.
    """
    return WKV4_FORMS(w_log, u, k, v, state=state, impl=impl, starts=starts)


def wkv4_reference(
    w_log: Array, u: Array, k: Array, v: Array, state: WKV4State | None = None, starts: Array | None = None
) -> tuple[Array, WKV4State]:
    """Float64 reference: the defining sums carried unscaled, one ``lax.scan`` step per token.

    Needs ``jax_enable_x64``. Valid while every exponent stays within float64 range (``|k|, |u + k|``,
    ``max_exp`` below ~700), which covers the tests. Differentiable. The returned state is rescaled to the
    running maximum exponent ``max(max_exp + w, k)`` so that it compares with the other forms; y is float64.
    ``starts`` as in :func:`wkv4_recurrent`.
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError("wkv4_reference computes in float64: enable jax_enable_x64 first")
    f64 = jnp.float64
    state = WKV4_FORMS.initial_state(state, (w_log, u, k, v), f64)
    w_log, u = w_log.astype(f64), u.astype(f64)
    decay = jnp.exp(w_log)

    def step(carry: tuple[Array, Array, Array], kv: tuple[Array, ...]) -> tuple[tuple, Array]:
        k_t, v_t, *start_t = kv
        big_num, big_den, max_exp = restart(start_t[0], first, carry) if start_t else carry
        bonus = jnp.exp(u + k_t)
        y = (big_num + bonus * v_t) / (big_den + bonus)
        e_k = jnp.exp(k_t)
        return (decay * big_num + e_k * v_t, decay * big_den + e_k, jnp.maximum(max_exp + w_log, k_t)), y

    scale = jnp.exp(state.max_exp)
    xs = (jnp.swapaxes(k, 0, 1).astype(f64), jnp.swapaxes(v, 0, 1).astype(f64))
    if starts is not None:
        xs += (jnp.swapaxes(starts, 0, 1),)
    first = (state.num * scale, state.den * scale, state.max_exp)
    (big_num, big_den, max_exp), ys = jax.lax.scan(step, first, xs)
    unscale = jnp.exp(-max_exp)
    return jnp.swapaxes(ys, 0, 1), WKV4State(big_num * unscale, big_den * unscale, max_exp)


WKV4_FORMS = WKVForms(
    name="WKV-4",
    inputs=(("w_log", "C"), ("u", "C"), ("k", "BTC"), ("v", "BTC")),
    state=("BC", "BC", "BC"),
    state_names=tuple(f"state.{name}" for name in WKV4State._fields),
    empty_state=lambda sizes: WKV4State.zeros(sizes["B"], sizes["C"]),
    forms={
        Impl.RECURRENT: without_chunks(wkv4_recurrent),
        Impl.SCAN: without_chunks(wkv4_scan),
        Impl.PALLAS: without_chunks(_wkv4_pallas),
    },
    reference=wkv4_reference,
    takes_starts=frozenset({Impl.RECURRENT, Impl.SCAN, Impl.PALLAS}),
    auto_cpu=Impl.RECURRENT,
    auto_accelerated=Impl.SCAN,
)
