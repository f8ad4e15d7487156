"""Rematerialisation per block: the backward pass keeps each block's inputs and recomputes the rest.

Without it a training step keeps, for the backward pass, every intermediate of every block (the mixes,
projections, the chunked WKV's scores and decays, the FFN's hidden layer): on XLA:CPU about 1 MiB per token
per layer at Finch 3.1B's width, the dominant term of the memory plans (docs/pod_scale.md). With
``LanguageModel.remat_blocks`` each block call is a ``jax.checkpoint``: the forward pass stores only what
enters the block (the residual stream ``x [B, T, C]``, the layer state and its parameters), and the backward
pass runs the block's forward once more before its backward, about a third more compute for activation
memory divided by the number of layers. The values are the same function; only the schedule changes.
"""

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx


def rematerialised(call: Callable[..., Any]) -> Callable[..., Any]:
    """``call(block, *args)`` as a ``jax.checkpoint``: its intermediates are recomputed in the backward pass
    instead of stored. ``block`` (an nnx module) is split into its graph and state so that its parameters
    enter the checkpoint as arguments; ``args`` are arrays or pytrees of arrays."""

    def run(block: nnx.Module, *args: Any) -> Any:
        graphdef, state = nnx.split(block)

        @jax.checkpoint
        def pure(state: Any, *args: Any) -> Any:
            return call(nnx.merge(graphdef, state), *args)

        return pure(state, *args)

    return run
