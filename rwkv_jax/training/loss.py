"""Next-token cross entropy and RWKV-LM's L2Wrap logit penalty.

L2Wrap (RWKV-LM ``L2Wrap``) leaves the loss value alone and adds, in the backward pass, a gradient
``coef / (B * T) * max_v(logits)`` on each position's largest logit, which keeps the logits from drifting
upwards. That gradient is exactly the gradient of ``coef / (B * T) * 0.5 * sum_{b,t} max_v(logits)^2``, so it
is written here as that penalty term (reported separately from the cross entropy).
"""

import math

import jax
import jax.numpy as jnp

from rwkv_jax.array_typing import Array

NATS_PER_BIT = math.log(2.0)


def token_nll(logits: Array, targets: Array) -> Array:
    """Negative log-likelihood per position: logits ``[B, T, V]``, targets ``[B, T]`` -> ``[B, T]`` f32."""
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return logz - picked


def l2wrap_penalty(logits: Array, coef: float, num_positions: int) -> Array:
    """``coef / num_positions * 0.5 * sum(max_v(logits)^2)``; its gradient is RWKV-LM's L2Wrap gradient."""
    peak = jnp.max(logits.astype(jnp.float32), axis=-1)
    return coef / num_positions * 0.5 * jnp.sum(jnp.square(peak))


def lm_loss(logits: Array, targets: Array, l2wrap: float = 0.0, num_positions: int | None = None) -> tuple:
    """The training objective and the mean cross entropy (nats per token).

    Args:
      logits: ``[B, T, V]``.
      targets: ``[B, T]`` token ids.
      l2wrap: L2Wrap coefficient (0 disables it).
      num_positions: the ``B * T`` that normalises sums; pass the full sequence's count when ``logits`` is
        one segment of a longer sequence (defaults to this call's ``B * T``).

    Returns:
      ``(objective, nll_sum)``: the objective is ``sum(nll) / num_positions`` plus the penalty; ``nll_sum``
      (the summed cross entropy) lets segment losses be added up exactly.
    """
    count = num_positions or targets.size
    nll_sum = jnp.sum(token_nll(logits, targets))
    objective = nll_sum / count
    if l2wrap:
        objective = objective + l2wrap_penalty(logits, l2wrap, count)
    return objective, nll_sum
