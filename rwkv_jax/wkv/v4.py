"""WKV-4: the per-channel time-mixing recurrence of RWKV-4 (arXiv 2305.13048).

For each channel, with log decay ``w <= 0`` and bonus ``u``::

    y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (same with v = 1)

State is the numerically stable triple of the official kernels: ``num`` and ``den`` scaled by
``e^{-max_exp}``, and the running maximum exponent ``max_exp``. All three are float32 ``[B, C]``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rwkv_jax.array_typing import Array

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


def wkv4_recurrent(
    w_log: Array, u: Array, k: Array, v: Array, state: WKV4State | None = None
) -> tuple[Array, WKV4State]:
    """One ``lax.scan`` step per token: the inference form.

    Args:
      w_log: ``[C]`` log decay (``-exp(time_decay)``), float32, ``<= 0``.
      u: ``[C]`` bonus for the current token (``time_first``).
      k, v: ``[B, T, C]`` keys and values (any float dtype; computed in float32).
      state: initial :class:`WKV4State`, or None for the empty state.

    Returns:
      ``y [B, T, C]`` in ``v.dtype`` and the final state.
    """
    batch, _, channels = k.shape
    if state is None:
        state = WKV4State.zeros(batch, channels)
    w_log = w_log.astype(jnp.float32)
    u = u.astype(jnp.float32)

    def step(carry: WKV4State, kv: tuple[Array, Array]) -> tuple[WKV4State, Array]:
        num, den, max_exp = carry
        k_t, v_t = kv
        # Output: mix the stored sum with the current token, which gets the bonus u.
        ww = u + k_t
        p = jnp.maximum(max_exp, ww)
        e_state, e_token = jnp.exp(max_exp - p), jnp.exp(ww - p)
        y = (e_state * num + e_token * v_t) / (e_state * den + e_token)
        # State update: decay the stored sum by e^w and add the current token without bonus.
        ww = w_log + max_exp
        p = jnp.maximum(ww, k_t)
        e_state, e_token = jnp.exp(ww - p), jnp.exp(k_t - p)
        new = WKV4State(e_state * num + e_token * v_t, e_state * den + e_token, p)
        return new, y

    xs = (jnp.swapaxes(k, 0, 1).astype(jnp.float32), jnp.swapaxes(v, 0, 1).astype(jnp.float32))
    state = WKV4State(*(s.astype(jnp.float32) for s in state))
    final, ys = jax.lax.scan(step, state, xs)
    return jnp.swapaxes(ys, 0, 1).astype(v.dtype), final
