"""Prefix states: read a shared prompt once, then branch many continuations from its state.

An RNN's whole history is its state (a fixed size, unlike a transformer's growing KV cache), so the state
after a shared prefix (a system prompt, a few-shot preamble, a document) can be kept and copied into every
row of a batch::

    cached = prefix_state(model, system_prompt)                # computed once, batch 1
    result = branch(model, system_prompt, questions, 64, state=cached)   # no re-read of the prefix

Each row's result equals generating ``prefix + suffix`` from the model's initial state, token for token.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.generation import GenerationResult, generate


def prefix_state(model: nnx.Module, prefix: Sequence[int], state: Any = None) -> Any:
    """The state (batch 1) after reading all of ``prefix`` but its last id from ``state`` (default the
    model's initial state). The last id is left out so that a branch can feed it and get its prediction:
    see :func:`branch`. A one-id prefix gives ``state`` itself."""
    ids = np.asarray(prefix)
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise ValueError(f"prefix must be a non-empty list of integer ids, got {prefix!r:.80}")
    state = model.init_state(1) if state is None else state
    if ids.size == 1:
        return state
    _, state = model(jnp.asarray(ids[None, :-1], jnp.int32), state, last_only=True)
    return state


def repeat_rows(state: Any, batch_size: int) -> Any:
    """A batch-1 state copied into ``batch_size`` rows (batch on axis 0)."""
    return jax.tree.map(lambda leaf: jnp.repeat(leaf, batch_size, axis=0), state)


def branch(
    model: nnx.Module,
    prefix: Sequence[int],
    suffixes: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    state: Any = None,
    **options: Any,
) -> GenerationResult:
    """:func:`rwkv_jax.generation.generate` of ``[prefix + s for s in suffixes]`` reading ``prefix`` once.

    ``state``: :func:`prefix_state` of this prefix, when cached (else it is computed here). Suffixes may be
    empty (then the rows sample different continuations of the prefix itself). ``options`` go to
    ``generate`` (sampling, seed, stop tokens, callback).
    """
    if isinstance(suffixes, str | bytes) or not len(suffixes):
        raise ValueError(
            "suffixes must be a non-empty list of token-id lists (an empty list per row is fine)"
        )
    cached = prefix_state(model, prefix) if state is None else state
    for path, leaf in jax.tree_util.tree_leaves_with_path(cached):
        if jnp.shape(leaf)[0] != 1:
            raise ValueError(f"state leaf {jax.tree_util.keystr(path)} must have batch 1 (prefix_state's)")
    last = [int(np.asarray(prefix)[-1])]
    prompts = [last + [int(i) for i in suffix] for suffix in suffixes]
    return generate(model, prompts, max_new_tokens, state=repeat_rows(cached, len(prompts)), **options)
