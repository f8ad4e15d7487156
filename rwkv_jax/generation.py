"""Text generation with any rwkv_jax model: batched, ragged prompts, streaming, top-k / top-p sampling.

The model contract (every model of rwkv_jax): ``model(tokens[B, T] int32, state) -> (logits[B, T, V]
float32, state)`` and ``model.init_state(B)``, the state a pytree whose leaves all have the batch on axis 0.

How a batch of prompts of different lengths runs: the shortest length m is prefilled for all rows in one
call; then one jitted step per token feeds every row its next token, which is a prompt token while the row
still has some (teacher forcing) and a sampled one afterwards. An RNN has no positions to align, so rows are
simply at different phases; a row that has finished keeps its state (the step masks its update), so every
row's result equals generating that prompt alone.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.array_typing import Array
from rwkv_jax.decoding import apply, decoder

# callback(new_tokens, step): new_tokens [B] int, the token each row generated at this step, -1 for none.
StepCallback = Callable[[np.ndarray, int], None]


@dataclasses.dataclass
class GenerationResult:
    """What :func:`generate` returns.

    Attributes:
      tokens: the generated ids of each prompt (a stop token that ended a row is not included).
      state: the model state after each row's prompt and all its generated ids, batch on axis 0; pass it
        back to continue.
      next_logits: [B, V] float32, the prediction after the last id each row consumed.
      stopped: per row, True where a stop token ended it, False where max_new_tokens did.
    """

    tokens: list[list[int]]
    state: Any
    next_logits: Array
    stopped: list[bool]


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """Raises ValueError for settings outside temperature >= 0, integer top_k >= 0, 0 < top_p <= 1."""
    if not (np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")


def sample_logits(
    logits: Array, key: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> Array:
    """Draws one id per row from ``logits [..., V]`` -> ``[...]`` int32, in float32.

    temperature 0 is greedy (argmax). Otherwise the logits are divided by the temperature, then top-k keeps
    the k largest (ties at the k-th value are all kept), then top-p (nucleus) keeps the smallest set of the
    most probable ids whose probability (after the previous steps, renormalised) reaches top_p (ties at its
    boundary kept), and one id is drawn from what is left, renormalised. The settings are Python numbers
    (static under jit).
    """
    check_sampling(temperature, top_k, top_p)
    logits = jnp.asarray(logits, jnp.float32)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth_largest, logits, -jnp.inf)
    if top_p < 1:
        logits = _nucleus(logits, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _nucleus(logits: Array, top_p: float) -> Array:
    """``logits [..., V]``, -inf outside the smallest most probable set whose probability reaches top_p."""
    descending = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(descending, axis=-1)
    # An id is kept when the probability of the ids before it is still short of top_p (the first always is).
    kept = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    cutoff = jnp.min(jnp.where(kept, descending, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= cutoff, logits, -jnp.inf)


def _prefill(graphdef: nnx.GraphDef, params: nnx.State, state: Any, tokens: Array) -> tuple[Array, Any]:
    """Feeds ``tokens [B, T]``; returns the last logits [B, V] (the head runs on that position only) and
    the state."""
    logits, state = apply(graphdef, params, tokens, state, last_only=True)
    return logits[:, -1], state


def _step(
    graphdef: nnx.GraphDef,
    temperature: float,
    top_k: int,
    top_p: float,
    params: nnx.State,
    state: Any,
    logits: Array,
    key: jax.Array,
    forced: Array,
    is_forced: Array,
    active: Array,
    stop_ids: Array,
) -> tuple[Array, Array, Array, Any]:
    """One token for every row: the forced (prompt) id where ``is_forced``, else one drawn from ``logits``.

    The model consumes it in the rows that are ``active`` and did not just draw a stop id; the other rows
    keep their state and logits. Returns (token [B], drew_stop [B], logits [B, V], state).
    """
    token = jnp.where(is_forced, forced, sample_logits(logits, key, temperature, top_k, top_p))
    drew_stop = ~is_forced & jnp.isin(token, stop_ids)
    feed = active & ~drew_stop
    new_logits, new_state = apply(graphdef, params, token[:, None], state)

    def keep_unfed(new: Array, old: Array) -> Array:
        return jnp.where(feed.reshape(-1, *(1,) * (new.ndim - 1)), new, old)

    return token, drew_stop, keep_unfed(new_logits[:, -1], logits), jax.tree.map(keep_unfed, new_state, state)


@functools.lru_cache(maxsize=16)
def _compiled(
    graphdef: nnx.GraphDef, temperature: float, top_k: int, top_p: float
) -> tuple[Callable, Callable]:
    """Jitted prefill and step for one model structure and sampling setting.

    The static parts are bound here, once per :func:`generate` call, so that a decoding step does not hash
    the model's graph definition again (that costs about a millisecond a step for RWKV-4).
    """
    prefill = jax.jit(functools.partial(_prefill, graphdef))
    step = jax.jit(functools.partial(_step, graphdef, temperature, top_k, top_p))
    return prefill, step


def _check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int | None) -> list[list[int]]:
    if isinstance(prompts, str | bytes) or not len(prompts):
        raise ValueError("prompts must be a non-empty list of token-id lists (tokenize the text first)")
    checked = []
    for i, prompt in enumerate(prompts):
        ids = np.asarray(prompt)
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
            raise ValueError(f"prompts[{i}] must be a non-empty list of integer ids, got {prompt!r:.80}")
        if vocab_size is not None and ((ids < 0) | (ids >= vocab_size)).any():
            raise ValueError(f"prompts[{i}] has ids outside the vocabulary [0, {vocab_size})")
        checked.append(ids.tolist())
    return checked


def _check_state(state: Any, batch_size: int) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != batch_size:
            raise ValueError(
                f"state leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}; expected the batch "
                f"({batch_size} prompts) on axis 0"
            )


def generate(
    model: nnx.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
    stop_tokens: Sequence[int] = (),
    callback: StepCallback | None = None,
    state: Any = None,
) -> GenerationResult:
    """Continues each prompt by up to ``max_new_tokens`` ids.

    Args:
      model: a model following the contract in the module docstring.
      prompts: B lists of token ids, lengths may differ (each at least 1).
      max_new_tokens: ids to generate per prompt (a row ends earlier when it draws a stop token).
      temperature, top_k, top_p: sampling, see :func:`sample_logits`; temperature 0 or ``greedy`` = argmax.
      seed: the random stream (the same seed and inputs give the same ids).
      stop_tokens: ids that end a row; the stop id is neither returned nor fed to the model.
      callback: called after every step as ``callback(new_tokens, step)``, new_tokens [B] int with the id
        each row generated at that step, -1 for rows that generated none (still reading the prompt, done).
      state: the state to start from (batch on axis 0), e.g. ``GenerationResult.state``; default the model's
        empty state.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    temperature = 0.0 if greedy else float(temperature)
    check_sampling(temperature, top_k, top_p)
    prompts = _check_prompts(prompts, getattr(getattr(model, "config", None), "vocab_size", None))
    batch_size, lengths = len(prompts), np.array([len(p) for p in prompts])
    state = model.init_state(batch_size) if state is None else state
    _check_state(state, batch_size)

    jitted = decoder(model)  # on CPU a bf16/f16 model decodes in float32 (rwkv_jax.decoding)
    params = jitted.params
    prefill, decode_step = _compiled(jitted.graphdef, temperature, int(top_k), float(top_p))
    common = int(lengths.min())
    logits, state = prefill(params, state, jnp.asarray([p[:common] for p in prompts], jnp.int32))
    # Prompt ids still to feed after the common prefix: row b has lengths[b] - common of them.
    rest = np.zeros((batch_size, int(lengths.max()) - common), np.int32)
    for b, prompt in enumerate(prompts):
        rest[b, : len(prompt) - common] = prompt[common:]
    stop_ids = jnp.asarray(sorted(set(stop_tokens)), jnp.int32)
    base_key = jax.random.key(seed)

    generated: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * batch_size
    active = (lengths > common) | (max_new_tokens > 0)
    step = 0
    while active.any():
        is_forced = step < lengths - common
        forced = rest[:, step] if step < rest.shape[1] else np.zeros(batch_size, np.int32)
        token, drew_stop, logits, state = decode_step(
            params, state, logits, jax.random.fold_in(base_key, step), forced, is_forced, active, stop_ids
        )
        token, drew_stop = np.asarray(token), np.asarray(drew_stop)
        new_tokens = np.full(batch_size, -1, np.int64)
        for b in np.flatnonzero(active):
            if is_forced[b]:
                active[b] = step + 1 < lengths[b] - common or max_new_tokens > 0
            elif drew_stop[b]:
                stopped[b], active[b] = True, False
            else:
                generated[b].append(int(token[b]))
                new_tokens[b] = token[b]
                active[b] = len(generated[b]) < max_new_tokens
        if callback is not None:
            callback(new_tokens, step)
        step += 1
    return GenerationResult(tokens=generated, state=state, next_logits=logits, stopped=stopped)
