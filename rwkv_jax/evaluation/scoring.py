"""Scoring token sequences with a recurrent model, batched, reusing states instead of re-reading text.

An RNN's state after a context is all that continuing it needs, so requests that share a context read the
context once: its state is kept and every continuation starts from it. A long document is read in pieces,
the state carried from one to the next, so nothing is read twice.

How a batch of rows of different lengths runs: a row of length L is cut into pieces whose sizes come from a
short descending list ending in 1 (``pieces=(128, 16, 1)``: as many 128s as fit, then 16s, then single
tokens). All rows of a batch walk the same sequence of piece sizes; a row without a piece of the current
size keeps its state (the update is masked out), so every call has one of ``len(pieces)`` shapes and jit
compiles that many programs per batch size, whatever the lengths.
"""

import dataclasses
import functools
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.generation import generate

DEFAULT_PIECES = (128, 16, 1)


@dataclasses.dataclass
class Scores:
    """What :meth:`RecurrentScorer.run` returns, one entry per row in the order given.

    Attributes:
      logprob: [R] float64, the summed log-probability (nats) of each row's targets.
      greedy: [R] bool, whether every target was the argmax of its prediction.
      state: the state after each row (batch axis R), or None when not asked for.
    """

    logprob: np.ndarray
    greedy: np.ndarray
    state: Any = None


def _masked_piece(graphdef, params, state, tokens, targets, active):
    """One model call on ``tokens [B, T]``; rows not ``active`` keep their state. Returns the target
    log-probabilities and greedy flags ``[B, T]`` and the state (always scoring: one program per shape)."""
    logits, new_state = nnx.merge(graphdef, params)(tokens, state)

    def keep_inactive(new, old):
        return jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

    state = jax.tree.map(keep_inactive, new_state, state)
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_logprob = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
    return target_logprob, jnp.argmax(logits, axis=-1) == targets, state


def _plan(length: int, pieces: Sequence[int]) -> list[int]:
    """How many pieces of each size a row of ``length`` tokens takes."""
    counts = []
    for size in pieces:
        counts.append(length // size)
        length -= counts[-1] * size
    return counts


class RecurrentScorer:
    """Runs rows of tokens through ``model`` from given states, ``batch_size`` rows at a time.

    Args:
      model: any rwkv_jax model (``model(tokens [B, T], state) -> (logits [B, T, V], state)``,
        ``model.init_state(B)``, every state leaf with the batch on axis 0).
      batch_size: rows per model call.
      pieces: descending piece sizes ending in 1 (see the module docstring).

    Attributes:
      tokens_fed: how many real (not padding) tokens the model has read so far; calls: model calls made.
    """

    def __init__(self, model: nnx.Module, batch_size: int = 16, pieces: Sequence[int] = DEFAULT_PIECES):
        pieces = tuple(int(p) for p in pieces)
        if not pieces or pieces[-1] != 1 or any(a <= b for a, b in itertools.pairwise(pieces)):
            raise ValueError(f"pieces must be strictly descending sizes ending in 1, got {pieces}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.model, self.batch_size, self.pieces = model, batch_size, pieces
        self.graphdef, self.params = nnx.split(model)
        self._piece = jax.jit(functools.partial(_masked_piece, self.graphdef))
        self.tokens_fed = self.calls = 0

    def run(
        self,
        rows: Sequence[Sequence[int]],
        targets: Sequence[Sequence[int]] | None = None,
        states: Any = None,
        state_index: Sequence[int] | None = None,
        keep_state: bool = False,
    ) -> Scores:
        """Feeds every row from its starting state and scores its targets.

        Args:
          rows: R token lists (may be empty: the row's state is then its starting state).
          targets: R lists as long as their rows, the token each position should predict; None to score
            nothing (only states wanted).
          states: starting states (batch axis S), or None for the empty state.
          state_index: [R] which of ``states`` each row starts from (default: row r from state r).
          keep_state: return the state after each row.
        """
        if targets is not None and [len(t) for t in targets] != [len(r) for r in rows]:
            raise ValueError("targets must be as long as their rows")
        self._check_ids(rows if targets is None else [*rows, *targets])
        if states is not None and state_index is None:
            state_index = range(len(rows))
        order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))  # like lengths share batches
        logprob, greedy = np.zeros(len(rows)), np.ones(len(rows), bool)
        kept = []
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            if states is None:
                state = self.model.init_state(self.batch_size)
            else:  # padding rows start from the first row's state, and never change it
                index = np.array(
                    [state_index[r] for r in batch] + [state_index[batch[0]]] * (self.batch_size - len(batch))
                )
                state = jax.tree.map(lambda leaf, i=index: jnp.take(leaf, i, axis=0), states)
            sums, flags, state = self._run_batch(
                [rows[r] for r in batch], None if targets is None else [targets[r] for r in batch], state
            )
            logprob[batch], greedy[batch] = sums, flags
            if keep_state:
                count = len(batch)
                kept.append(jax.tree.map(lambda leaf, n=count: leaf[:n], state))
        state = None
        if keep_state and kept:
            inverse = np.argsort(order)
            state = jax.tree.map(lambda *leaves: jnp.concatenate(leaves)[inverse], *kept)
        return Scores(logprob, greedy, state)

    def _check_ids(self, sequences: Sequence[Sequence[int]]) -> None:
        """ValueError for an id outside [0, V): the embedding lookup would silently clamp it."""
        vocab_size = self.model.config.vocab_size
        for i, tokens in enumerate(sequences):
            if len(tokens) and not 0 <= min(tokens) <= max(tokens) < vocab_size:
                raise ValueError(
                    f"row {i} holds token ids outside [0, {vocab_size}) (the model's vocabulary): "
                    f"{min(tokens)}..{max(tokens)}; is the tokenizer the model's?"
                )

    def _run_batch(self, rows: list, targets: list | None, state: Any) -> tuple[np.ndarray, np.ndarray, Any]:
        count, B = len(rows), self.batch_size
        plans = np.array([_plan(len(row), self.pieces) for row in rows]).reshape(count, len(self.pieces))
        offsets = np.zeros(count, int)
        sums, flags = np.zeros(count), np.ones(count, bool)
        for p, size in enumerate(self.pieces):
            for repeat in range(int(plans[:, p].max(initial=0))):
                active = np.zeros(B, bool)
                active[:count] = plans[:, p] > repeat
                tokens, wanted = np.zeros((B, size), np.int32), np.zeros((B, size), np.int32)
                for b in np.flatnonzero(active):
                    tokens[b] = rows[b][offsets[b] : offsets[b] + size]
                    if targets is not None:
                        wanted[b] = targets[b][offsets[b] : offsets[b] + size]
                    offsets[b] += size
                logp, hit, state = self._piece(
                    self.params, state, jnp.asarray(tokens), jnp.asarray(wanted), jnp.asarray(active)
                )
                self.tokens_fed, self.calls = self.tokens_fed + int(active.sum()) * size, self.calls + 1
                if targets is not None:
                    on = active[:count]
                    sums[on] += np.asarray(logp, np.float64)[:count][on].sum(-1)
                    flags[on] &= np.asarray(hit)[:count][on].all(-1)
        return sums, flags, state


def _check_nonempty(what: str, sequences: Sequence[Sequence[int]]) -> None:
    for i, tokens in enumerate(sequences):
        if len(tokens) == 0:
            raise ValueError(f"{what} {i} is empty; every {what} needs at least one token")


def score_continuations(
    scorer: RecurrentScorer,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    share_contexts: bool = True,
    contexts_per_group: int = 64,
) -> list[tuple[float, bool]]:
    """``(log p(continuation | context), greedy)`` of each ``(context, continuation)`` token pair.

    Each distinct context runs once up to its last token (``share_contexts=False``: once per request, the
    cost of scoring from scratch); every continuation then runs from that state as ``[last context
    token] + continuation[:-1]`` against the targets ``continuation``. Contexts are taken
    ``contexts_per_group`` at a time, so at most that many states are held.
    """
    _check_nonempty("context", [c for c, _ in pairs])
    _check_nonempty("continuation", [c for _, c in pairs])
    by_context: dict[Any, list[int]] = {}
    for i, (context, _) in enumerate(pairs):
        by_context.setdefault(tuple(context) if share_contexts else i, []).append(i)
    groups = sorted(by_context.values(), key=lambda members: -len(pairs[members[0]][0]))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    for start in range(0, len(groups), contexts_per_group):
        chunk = groups[start : start + contexts_per_group]
        contexts = [list(pairs[members[0]][0]) for members in chunk]
        prefixes = scorer.run([c[:-1] for c in contexts], keep_state=True).state
        requests = [(g, i) for g, members in enumerate(chunk) for i in members]
        rows = [[contexts[g][-1], *pairs[i][1][:-1]] for g, i in requests]
        scores = scorer.run(
            rows, [list(pairs[i][1]) for _, i in requests], prefixes, [g for g, _ in requests]
        )
        for (_, i), logprob, greedy in zip(requests, scores.logprob, scores.greedy, strict=True):
            results[i] = (float(logprob), bool(greedy))
    return results


def score_documents(
    scorer: RecurrentScorer, documents: Sequence[Sequence[int]], prefix_token: int
) -> list[float]:
    """``log p(document)`` of each token list, every token predicted from ``prefix_token`` and all before it
    (one pass: the state is carried from piece to piece; an empty document scores 0)."""
    rows = [[prefix_token, *doc[:-1]] if len(doc) else [] for doc in documents]
    return [float(x) for x in scorer.run(rows, [list(doc) for doc in documents]).logprob]


def generate_continuations(
    scorer: RecurrentScorer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_tokens: Sequence[int] = (),
    temperature: float = 0.0,
    seed: int = 0,
) -> list[list[int]]:
    """Continues each prompt (temperature 0: greedily) by up to ``max_new_tokens`` ids, ``batch_size``
    prompts at a time: the prompts but their last token are read in pieces (:meth:`RecurrentScorer.run`),
    then :func:`rwkv_jax.generation.generate` feeds the last token and samples from there."""
    _check_nonempty("prompt", prompts)
    outputs = []
    for start in range(0, len(prompts), scorer.batch_size):
        batch = [list(p) for p in prompts[start : start + scorer.batch_size]]
        state = scorer.run([p[:-1] for p in batch], keep_state=True).state
        result = generate(
            scorer.model, [p[-1:] for p in batch], max_new_tokens, temperature=temperature,
            stop_tokens=stop_tokens, state=state, seed=seed + start,
        )  # fmt: skip
        outputs.extend(result.tokens)
    return outputs
