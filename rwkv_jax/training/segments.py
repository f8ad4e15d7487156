"""The loss of a (possibly long) sequence, optionally cut into segments that carry the recurrent state.

With ``segment_len = S`` a ``[B, T]`` sequence is processed as ``T / S`` segments in a ``lax.scan``; the
model's state (WKV state and token-shift inputs) flows from one segment to the next exactly as in one call.
Each segment is rematerialised (``jax.checkpoint``), so the backward pass stores one segment's activations at
a time plus the carried states. The gradient either flows through the carried state (exact: equal to the
full-sequence gradient) or stops there (``truncate=True``: ``stop_gradient``, truncated BPTT).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from rwkv_jax.array_typing import Array
from rwkv_jax.training.loss import lm_loss

Apply = Callable[[Any, Array, Any], tuple[Array, Any]]


def sequence_loss(
    apply: Apply,
    params: Any,
    inputs: Array,
    targets: Array,
    initial_state: Any,
    *,
    segment_len: int = 0,
    truncate: bool = False,
    l2wrap: float = 0.0,
) -> tuple[Array, Array]:
    """``(objective, nll_sum)`` of ``targets [B, T]`` given ``inputs [B, T]`` (see ``loss.lm_loss``).

    Args:
      apply: ``apply(params, tokens, state) -> (logits, state)``.
      initial_state: the state before the first token (the model's zero state for fresh sequences).
      segment_len: 0 (or >= T) runs the whole sequence in one call; otherwise T must be a multiple of it.
      truncate: stop the gradient at each segment boundary.
      l2wrap: L2Wrap coefficient.
    """
    batch, length = targets.shape
    if segment_len <= 0 or segment_len >= length:
        logits, _ = apply(params, inputs, initial_state)
        return lm_loss(logits, targets, l2wrap)
    if length % segment_len:
        raise ValueError(f"sequence length {length} is not a multiple of segments.length {segment_len}")
    count = batch * length

    @jax.checkpoint
    def segment(params: Any, state: Any, seg_inputs: Array, seg_targets: Array) -> tuple[Any, tuple]:
        logits, state = apply(params, seg_inputs, state)
        return state, lm_loss(logits, seg_targets, l2wrap, num_positions=count)

    def body(state: Any, xs: tuple[Array, Array]) -> tuple[Any, tuple]:
        if truncate:
            state = jax.lax.stop_gradient(state)
        return segment(params, state, *xs)

    def by_segment(x: Array) -> Array:  # [B, T] -> [T / S, B, S]
        return jnp.swapaxes(x.reshape(batch, length // segment_len, segment_len), 0, 1)

    _, (objectives, nll_sums) = jax.lax.scan(body, initial_state, (by_segment(inputs), by_segment(targets)))
    return objectives.sum(), nll_sums.sum()
