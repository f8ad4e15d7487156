"""A text sample from the model being trained: the prompt as one prefill call, then one token per call."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.training.model import ModelFns


def sample_tokens(
    fns: ModelFns, params: Any, prompt: np.ndarray, num_tokens: int, temperature: float = 0.0, seed: int = 0
) -> np.ndarray:
    """Continues ``prompt`` (1-D token ids, non-empty) by ``num_tokens`` tokens; greedy when temperature is 0.

    Returns the generated ids (without the prompt) as int32 ``[num_tokens]``.
    """
    if len(prompt) == 0:
        raise ValueError("the sample prompt must hold at least one token")

    def pick(logits: jax.Array, key: jax.Array) -> jax.Array:  # logits [1, V] -> [1]
        if temperature > 0:
            return jax.random.categorical(key, logits / temperature).astype(jnp.int32)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    @jax.jit
    def prefill(params: Any, tokens: jax.Array, key: jax.Array) -> tuple[jax.Array, Any]:
        logits, state = fns.apply(params, tokens)
        return pick(logits[:, -1], key), state

    @jax.jit
    def decode(params: Any, token: jax.Array, state: Any, key: jax.Array) -> tuple[jax.Array, Any]:
        logits, state = fns.apply(params, token[:, None], state)
        return pick(logits[:, -1], key), state

    keys = jax.random.split(jax.random.key(seed), max(num_tokens, 1))
    out = []
    if num_tokens:
        token, state = prefill(params, jnp.asarray(prompt, jnp.int32)[None], keys[0])
        out.append(token)
        for key in keys[1:]:
            token, state = decode(params, token, state, key)
            out.append(token)
    return np.asarray(jnp.concatenate(out) if out else jnp.zeros(0, jnp.int32))
