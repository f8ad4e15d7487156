"""What the chunked WKV kernels (WKV-5/6, WKV-7) share: tiling, the 0/1 matrices of a sub-chunk, the exact
decays of its ranges, and the kernels that walk blocks of sub-chunks with the state carried, wired as one
``pallas_call`` for TPU (Mosaic) or GPU (Triton). A family gives only its sub-chunk math, as a
:class:`Recurrence`.

Time is cut in blocks of ``BlockSizes.block_t`` tokens (one grid step on TPU, one loop iteration on GPU) and
each block in sub-chunks of ``SUB_CHUNK`` tokens, processed in order with the state carried in VMEM /
registers. Within a sub-chunk every exponent is a sum of log decays over a range of its steps, computed as a
masked sum of that range only (a matmul with a 0/1 matrix): it is ``<= 0`` (no overflow, whatever the decay)
and carries no cancellation error from a long prefix. Pairwise factors are exact per channel: the ``S * S``
pairs (t, s) are laid out as rows of an ``[S*S, N]`` matrix, built with 0/1 selection matmuls so that
everything is 2-D (Mosaic and Triton both lower it); pairs with ``s >= t`` get the exponent ``-inf`` through
``jnp.where`` (``exp`` gives 0, and a hand-written backward multiplies by that 0).

Backward (``custom_vjp``): the forward kernel stores the state at the start of every block
(``[B, H, T / block_t * N, N]`` float32). The backward kernel runs the blocks in reverse time order with the
state's gradient carried; in each block it recomputes the sub-chunk states from the stored one, then goes
through the sub-chunks backwards.

Packed documents (``starts``, optional): a ``[B, T, 1]`` float 0/1 input marks the tokens before which the
state returns to the call's initial state. Per sub-chunk, :func:`documents` derives the masks of the
documents in it (the ranges of the decays and the pairs restricted to one document, which rows read the
carried state and which the initial one, which reach the state after the sub-chunk); the family's math takes
them (:class:`Documents`) and its backward also returns the initial state's gradient, summed over the
sub-chunks by the backward kernel.

Layout: the kernels see ``[B, H, T, N]`` (one ``(block_t, N)`` tile per grid step, N the full last dim, as
Mosaic's (8, 128) rule requires), per-head parameters as ``[H, 1, N]`` and the state as ``[value, key]``, so
that a per-key decay scales columns. Values inside the kernels are float32; matmuls at HIGHEST precision.
This module imports jax only.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

# Tokens per sub-chunk with exact pairwise decays; Triton's dot needs every matmul dim >= 16.
SUB_CHUNK = 16
DEFAULT_BLOCK_T = 64
TARGETS = ("tpu", "gpu")
INPUT_DTYPES = (jnp.float32, jnp.bfloat16)
# w_log is clamped here: exp(-1e4) is 0 as exp(-inf) is, but the 0/1 matmuls would turn -inf into
# 0 * -inf = NaN.
LOG_DECAY_FLOOR = -1e4

_HIGHEST = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)
NN, NT, TN = ((1,), (0,)), ((1,), (1,)), ((0,), (0,))  # contracted dims of (lhs, rhs): a@b, a@b.T, a.T@b


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling of the kernels; affects speed and memory, not results.

    block_t: tokens per grid step (TPU) / loop iteration (GPU), and the interval at which the forward pass
      stores the state for the backward pass. A power of 2 and a multiple of ``SUB_CHUNK``.
    num_warps: Triton warps per program (GPU only).
    """

    block_t: int = DEFAULT_BLOCK_T
    num_warps: int = 4

    def __post_init__(self):
        block_t = self.block_t
        if not isinstance(block_t, int) or block_t < SUB_CHUNK or block_t & (block_t - 1):
            raise ValueError(f"block_t must be a power of 2 and at least {SUB_CHUNK}; got {block_t!r}")
        if not isinstance(self.num_warps, int) or self.num_warps < 1:
            raise ValueError(f"num_warps must be a positive int; got {self.num_warps!r}")


# ----------------------------------------------------------------------------------------------------------
# Constant 0/1 matrices of one sub-chunk (passed to the kernels as inputs, so kernels need no integer math).


class Pairs(NamedTuple):
    """For S = SUB_CHUNK and the pairs p = (t, s) flattened as p = t * S + s.

    row: ``[S*S, S]`` row[p, m] = (m == t);   col: ``[S*S, S]`` col[p, m] = (m == s)
    between: ``[S*S, S]`` (s < m < t);        causal: ``[S*S, 1]`` (s < t)
    before: ``[S, S]`` before[t, m] = (m < t) (also the strictly causal mask of an ``[S, S]`` score matrix)
    eye: ``[S, S]`` the identity
    """

    row: jax.Array
    col: jax.Array
    between: jax.Array
    causal: jax.Array
    before: jax.Array
    eye: jax.Array


def pair_matrices(size: int = SUB_CHUNK) -> Pairs:
    pair = np.arange(size * size)
    t, s, m = (pair // size)[:, None], (pair % size)[:, None], np.arange(size)[None, :]
    mats = (m == t, m == s, (s < m) & (m < t), s < t, m < np.arange(size)[:, None], np.eye(size))
    return Pairs(*(jnp.asarray(x, jnp.float32) for x in mats))


def dot(a: jax.Array, b: jax.Array, contract=NN) -> jax.Array:
    """``a @ b`` (or with ``contract=NT`` / ``TN`` the transposed one) in float32 at HIGHEST precision."""
    return lax.dot_general(a, b, (contract, ((), ())), precision=_HIGHEST, preferred_element_type=jnp.float32)


class Decays(NamedTuple):
    """Per sub-chunk, each the exp of a sum of log decays over a range of steps:
    exp(W[0, t)) [S, N], exp(W(s, S)) [S, N], exp(W[0, S)) [1, N], exp(W(s, t)) [S*S, N] (0 for s >= t)."""

    into: jax.Array
    out_of: jax.Array
    total: jax.Array
    pairs: jax.Array


class Documents(NamedTuple):
    """The packed documents of one sub-chunk.

    pairs: the sub-chunk's :class:`Pairs` with ``before`` and ``causal`` restricted to tokens of one document
      (so every range of decays starts at the document's start, and pairs across documents get decay 0).
    first: ``[S, 1]`` 1 for the tokens of the sub-chunk's first document: they read the carried state, the
      later documents' tokens read ``init``.
    last: ``[S, 1]`` 1 for the tokens of its last document: only they reach the state after the sub-chunk.
    carried: ``[1, 1]`` 1 when no document starts in the sub-chunk (the state after it grows from the carried
      state, else from ``init``).
    init: the call's initial state ``[value, key]``.
    """

    pairs: Pairs
    first: jax.Array
    last: jax.Array
    carried: jax.Array
    init: jax.Array


def documents(starts: jax.Array, pairs: Pairs, init: jax.Array) -> Documents:
    """The documents of a sub-chunk from its ``starts [S, 1]`` (float 0/1) and the call's initial state.

    Token t's document number is the count of starts up to t (exact small integers in float32); two tokens
    share a document when their numbers are equal. Elementwise sums only: no matmul with a dim of 1."""
    row = jnp.sum(pairs.eye * starts, axis=0, keepdims=True)  # [1, S]
    ids = jnp.sum((pairs.before + pairs.eye) * row, axis=1, keepdims=True)  # [S, 1]
    same = (ids == jnp.sum(pairs.eye * ids, axis=0, keepdims=True)).astype(jnp.float32)  # [S, S]
    count = jnp.sum(starts, axis=0, keepdims=True)  # [1, 1]
    within = pairs._replace(before=pairs.before * same, causal=pairs.causal * pick_pairs(same, pairs))
    as_float = functools.partial(jnp.asarray, dtype=jnp.float32)
    return Documents(within, as_float(ids == 0), as_float(ids == count), as_float(count == 0), init)


def decays(w: jax.Array, pairs: Pairs, docs: Documents | None = None) -> Decays:
    """The decays of a sub-chunk from its log decays ``w [S, N]``; with ``docs`` each range within one
    document, ``out_of`` and ``total`` over the last document only (``pairs`` is then ``docs.pairs``)."""
    between = dot(pairs.between, w)
    causal = jnp.broadcast_to(pairs.causal, between.shape) > 0
    out_of = jnp.exp(dot(pairs.before, w, TN))
    if docs is None:
        total = jnp.exp(jnp.sum(w, axis=0, keepdims=True))
    else:
        out_of, total = out_of * docs.last, jnp.exp(jnp.sum(w * docs.last, axis=0, keepdims=True))
    return Decays(
        into=jnp.exp(dot(pairs.before, w)),
        out_of=out_of,
        total=total,
        pairs=jnp.exp(jnp.where(causal, between, -jnp.inf)),
    )


def read(x: jax.Array, state: jax.Array, docs: Documents | None) -> jax.Array:
    """``x [S, key] @ state^T`` ``[S, value]``; with ``docs``, rows after a start read ``docs.init``."""
    if docs is None:
        return dot(x, state, NT)
    return dot(x * docs.first, state, NT) + dot(x * (1 - docs.first), docs.init, NT)


def read_backward(
    d_out: jax.Array, x: jax.Array, state: jax.Array, docs: Documents | None
) -> tuple[jax.Array, jax.Array, jax.Array | float]:
    """The gradients of :func:`read` from that of its output: ``(dx, d_state, d_init)`` (d_init 0 without
    documents)."""
    if docs is None:
        return dot(d_out, state), dot(d_out, x, TN), 0.0
    first = docs.first
    dx = dot(d_out, state) * first + dot(d_out, docs.init) * (1 - first)
    return dx, dot(d_out, x * first, TN), dot(d_out, x * (1 - first), TN)


def start_state(state: jax.Array, docs: Documents | None) -> jax.Array:
    """The state the sub-chunk's last document grows from: the carried one, or the initial one."""
    if docs is None:
        return state
    return docs.carried * state + (1 - docs.carried) * docs.init


def pair_scores(weighted: jax.Array, pairs: Pairs) -> jax.Array:
    """``[S*S, N]`` per-pair products (row t, column s) summed over N and laid out as ``[S(t), S(s)]``."""
    per_pair = jnp.sum(weighted, axis=1, keepdims=True)
    return dot(pairs.row, per_pair * pairs.col, TN)


def pick_pairs(scores: jax.Array, pairs: Pairs) -> jax.Array:
    """The inverse layout of :func:`pair_scores`: ``[S(t), S(s)] -> [S*S, 1]``, entry (t, s) per pair."""
    return jnp.sum(dot(pairs.row, scores) * pairs.col, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------------------
# The kernels: blocks of sub-chunks, the state carried. A family's math is a Recurrence.


@dataclasses.dataclass(frozen=True)
class Recurrence:
    """A family's sub-chunk math (float32 values; inputs ``[S, N]`` each, params ``[1, N]``, states
    ``[value, key]``).

    n_inputs: sequence inputs per token (r, k, v, w, ...), in the order of the kernel's arguments.
    n_params: per-head parameters ``[H, N]`` (WKV-6's bonus u); their gradients are summed over tokens.
    forward: ``(inputs, params, state, pairs[, docs]) -> (y [S, N], state after)``.
    next_state: ``(inputs, params, state, pairs[, docs]) -> state after`` (the backward's recomputation).
    backward: ``(inputs, params, state, d_next, dy, pairs[, docs]) -> (input grads, param grads [1, N],
      d_state[, d_init])`` with ``d_next`` the gradient of the state after the sub-chunk, ``d_state`` that of
      the one before and ``d_init`` that of the call's initial state (``docs.init``).
    takes_starts: whether the functions take the sub-chunk's :class:`Documents` (``docs``, last argument;
      given only when the call has ``starts``).
    """

    n_inputs: int
    n_params: int
    forward: Callable[..., tuple[jax.Array, jax.Array]]
    next_state: Callable[..., jax.Array]
    backward: Callable[..., tuple]
    takes_starts: bool = False


def _load(refs, rows) -> tuple[jax.Array, ...]:
    return tuple(ref[rows, :].astype(jnp.float32) for ref in refs)


def _sub_chunk_rows(offset, index: int) -> Any:
    return pl.ds(offset + index * SUB_CHUNK, SUB_CHUNK)


class _Starts(NamedTuple):
    """The packed documents of a kernel: the ``[T, 1]`` starts ref and the call's initial state."""

    ref: Any
    init: jax.Array

    def of(self, rows, pairs: Pairs) -> tuple[Documents]:
        return (documents(self.ref[rows, :].astype(jnp.float32), pairs, self.init),)


def _docs(starts: _Starts | None, rows, pairs: Pairs) -> tuple[Documents, ...]:
    """The extra argument of the family's functions for the sub-chunk ``rows``: none without starts."""
    return () if starts is None else starts.of(rows, pairs)


def _forward_block(rec: Recurrence, inputs, y_ref, pairs, params, state, offset, block_t, starts):
    """Runs the sub-chunks of one block (rows ``offset ...`` of the refs); returns the state after it."""
    for i in range(block_t // SUB_CHUNK):
        rows = _sub_chunk_rows(offset, i)
        y, state = rec.forward(_load(inputs, rows), params, state, pairs, *_docs(starts, rows, pairs))
        y_ref[rows, :] = y.astype(y_ref.dtype)
    return state


def _backward_block(
    rec: Recurrence, inputs, dy_ref, grad_refs, pairs, params, state, d_state, offset, block_t, starts
):
    """Backward through one block: recompute its sub-chunk states, then go through them in reverse. Writes
    the input gradients; returns the gradient of the state at the block start and the block's sums: the
    param grads, and with starts the initial state's gradient after them."""
    states = [state]
    for i in range(block_t // SUB_CHUNK - 1):
        rows = _sub_chunk_rows(offset, i)
        docs = _docs(starts, rows, pairs)
        states.append(rec.next_state(_load(inputs, rows), params, states[-1], pairs, *docs))
    sums = None
    for i in reversed(range(block_t // SUB_CHUNK)):
        rows = _sub_chunk_rows(offset, i)
        (dy,) = _load((dy_ref,), rows)
        docs = _docs(starts, rows, pairs)
        grads, param_grads, d_state, *d_init = rec.backward(
            _load(inputs, rows), params, states[i], d_state, dy, pairs, *docs
        )
        for ref, grad in zip(grad_refs, grads, strict=True):
            ref[rows, :] = grad.astype(ref.dtype)
        terms = (*param_grads, *d_init)
        sums = terms if sums is None else tuple(x + y for x, y in zip(sums, terms, strict=True))
    return d_state, sums


class _Refs(NamedTuple):
    """The refs of one kernel, split by role (see :func:`_split`)."""

    pairs: Pairs
    params: tuple[jax.Array, ...]
    inputs: tuple[Any, ...]
    extra: tuple[Any, ...]  # forward: (state0,); backward: (dy, saved, d_final)
    starts: tuple[Any, ...]  # with starts: (starts,) forward, (starts, init) backward; else ()
    outputs: tuple[Any, ...]
    scratch: tuple[Any, ...]


def _split(refs, rec: Recurrence, n_extra: int, n_starts: int, n_outputs: int) -> _Refs:
    """The flat ref list of a kernel: pair matrices, params, inputs, extra inputs, starts inputs, outputs,
    scratch."""
    groups, start = [], 0
    for count in (len(Pairs._fields), rec.n_params, rec.n_inputs, n_extra, n_starts, n_outputs):
        groups.append(tuple(refs[start : start + count]))
        start += count
    pair_refs, param_refs, inputs, extra, starts, outputs = groups
    params = tuple(ref[...].astype(jnp.float32) for ref in param_refs)
    pairs = Pairs(*(ref[...] for ref in pair_refs))
    return _Refs(pairs, params, inputs, extra, starts, outputs, tuple(refs[start:]))


def _forward_refs(refs, rec: Recurrence, with_starts: bool) -> tuple[_Refs, _Starts | None]:
    """A forward kernel's refs; the starts (their initial state the call's, ``state0``) or None."""
    parts = _split(refs, rec, 1, int(with_starts), 3)
    return parts, _Starts(parts.starts[0], parts.extra[0][...]) if with_starts else None


class _BackwardRefs(NamedTuple):
    """A backward kernel's refs: its parts, its starts (or None), the outputs of the input grads, of the
    sums over blocks (param grads, and with starts the initial state's gradient) and of d_state."""

    parts: _Refs
    starts: _Starts | None
    grads: tuple[Any, ...]
    sums: tuple[Any, ...]
    d_state: Any


def _backward_refs(refs, rec: Recurrence, with_starts: bool) -> _BackwardRefs:
    """Outputs: input grads, param grads, d_state[, d_init]."""
    n_outputs = rec.n_inputs + rec.n_params + 1 + int(with_starts)
    parts = _split(refs, rec, 3, 2 * int(with_starts), n_outputs)
    grads, rest = parts.outputs[: rec.n_inputs], parts.outputs[rec.n_inputs :]
    sums, d_state = rest[: rec.n_params], rest[rec.n_params]
    if not with_starts:
        return _BackwardRefs(parts, None, grads, sums, d_state)
    starts_ref, init_ref = parts.starts
    return _BackwardRefs(parts, _Starts(starts_ref, init_ref[...]), grads, (*sums, rest[-1]), d_state)


def _forward_kernel_tpu(*refs, rec: Recurrence, block_t: int, with_starts: bool):
    """Grid (B, H, blocks); the state lives in VMEM scratch across the sequential block axis."""
    parts, starts = _forward_refs(refs, rec, with_starts)
    (state0_ref,), (y_ref, final_ref, saved_ref), (state_ref,) = parts.extra, parts.outputs, parts.scratch
    block = pl.program_id(2)

    @pl.when(block == 0)
    def _():
        state_ref[...] = state0_ref[...]

    saved_ref[...] = state_ref[...]
    state = _forward_block(
        rec, parts.inputs, y_ref, parts.pairs, parts.params, state_ref[...], 0, block_t, starts
    )
    state_ref[...] = state

    @pl.when(block == pl.num_programs(2) - 1)
    def _():
        final_ref[...] = state


def _forward_kernel_gpu(*refs, rec: Recurrence, block_t: int, with_starts: bool):
    """Grid (B, H); one program walks the blocks of its sequence, the state carried in registers."""
    parts, starts = _forward_refs(refs, rec, with_starts)
    (state0_ref,), (y_ref, final_ref, saved_ref) = parts.extra, parts.outputs
    size = state0_ref.shape[0]

    def block(index, state):
        saved_ref[pl.ds(index * size, size), :] = state
        return _forward_block(
            rec, parts.inputs, y_ref, parts.pairs, parts.params, state, index * block_t, block_t, starts
        )

    final_ref[...] = lax.fori_loop(0, y_ref.shape[0] // block_t, block, state0_ref[...])


def _backward_kernel_tpu(*refs, rec: Recurrence, block_t: int, with_starts: bool):
    """Grid (B, H, blocks in reverse time order); dS lives in VMEM scratch; param grads (and the initial
    state's) accumulate in their outputs."""
    out = _backward_refs(refs, rec, with_starts)
    (dy_ref, saved_ref, d_final_ref), (d_state_ref,) = out.parts.extra, out.parts.scratch
    step = pl.program_id(2)

    @pl.when(step == 0)
    def _():
        d_state_ref[...] = d_final_ref[...]
        for ref in out.sums:
            ref[...] = jnp.zeros(ref.shape, ref.dtype)

    d_state, sums = _backward_block(
        rec,
        out.parts.inputs,
        dy_ref,
        out.grads,
        out.parts.pairs,
        out.parts.params,
        saved_ref[...],
        d_state_ref[...],
        0,
        block_t,
        out.starts,
    )
    d_state_ref[...] = d_state
    for ref, term in zip(out.sums, sums, strict=True):
        ref[...] += term

    @pl.when(step == pl.num_programs(2) - 1)
    def _():
        out.d_state[...] = d_state


def _backward_kernel_gpu(*refs, rec: Recurrence, block_t: int, with_starts: bool):
    """Grid (B, H); one program walks the blocks of its sequence backwards with dS and param grads (and the
    initial state's) carried."""
    out = _backward_refs(refs, rec, with_starts)
    dy_ref, saved_ref, d_final_ref = out.parts.extra
    size, n_blocks = d_final_ref.shape[0], dy_ref.shape[0] // block_t

    def block(step, carry):
        d_state, totals = carry
        index = n_blocks - 1 - step
        state = saved_ref[pl.ds(index * size, size), :]
        d_state, sums = _backward_block(
            rec,
            out.parts.inputs,
            dy_ref,
            out.grads,
            out.parts.pairs,
            out.parts.params,
            state,
            d_state,
            index * block_t,
            block_t,
            out.starts,
        )
        return d_state, tuple(total + term for total, term in zip(totals, sums, strict=True))

    zeros = tuple(jnp.zeros(ref.shape, jnp.float32) for ref in out.sums)
    d_state, totals = lax.fori_loop(0, n_blocks, block, (d_final_ref[...], zeros))
    out.d_state[...] = d_state
    for ref, total in zip(out.sums, totals, strict=True):
        ref[...] = total


# ----------------------------------------------------------------------------------------------------------
# pallas_call wiring. Arrays: sequences [B, H, T, N]; params [H, 1, N]; states [B, H, N, N] ([value, key]);
# saved block states [B, H, T / block_t * N, N]; param grads [B, H, 1, N]; starts [B, T, 1] float 0/1.


@dataclasses.dataclass(frozen=True)
class Call:
    """Static configuration of one kernel launch."""

    target: str
    block_sizes: BlockSizes
    interpret: bool | pltpu.InterpretParams


def _specs(call: Call, kinds: tuple[str, ...], shape, *, reverse: bool):
    """BlockSpecs for arrays of the given kinds: 'param', 'seq' (time-blocked), 'state', 'saved',
    'param_grad', 'starts' (time-blocked, shared by the heads)."""
    _, _, length, size = shape
    block_t = call.block_sizes.block_t
    n_blocks = length // block_t
    if call.target == "gpu":  # grid (B, H): whole sequences per program
        per_kind = {
            "param": pl.BlockSpec((None, 1, size), lambda b, h: (h, 0, 0)),
            "seq": pl.BlockSpec((None, None, length, size), lambda b, h: (b, h, 0, 0)),
            "state": pl.BlockSpec((None, None, size, size), lambda b, h: (b, h, 0, 0)),
            "saved": pl.BlockSpec((None, None, n_blocks * size, size), lambda b, h: (b, h, 0, 0)),
            "param_grad": pl.BlockSpec((None, None, 1, size), lambda b, h: (b, h, 0, 0)),
            "starts": pl.BlockSpec((None, length, 1), lambda b, h: (b, 0, 0)),
        }
    else:  # grid (B, H, blocks): one block of time per step, in reverse order for the backward pass

        def time_block(c):
            return n_blocks - 1 - c if reverse else c

        per_kind = {
            "param": pl.BlockSpec((None, 1, size), lambda b, h, c: (h, 0, 0)),
            "seq": pl.BlockSpec((None, None, block_t, size), lambda b, h, c: (b, h, time_block(c), 0)),
            "state": pl.BlockSpec((None, None, size, size), lambda b, h, c: (b, h, 0, 0)),
            "saved": pl.BlockSpec((None, None, size, size), lambda b, h, c: (b, h, time_block(c), 0)),
            "param_grad": pl.BlockSpec((None, None, 1, size), lambda b, h, c: (b, h, 0, 0)),
            "starts": pl.BlockSpec((None, block_t, 1), lambda b, h, c: (b, time_block(c), 0)),
        }
    return [per_kind[kind] for kind in kinds]


def _pair_specs(call: Call):
    if call.target == "gpu":
        return [pl.BlockSpec(m.shape, lambda b, h: (0, 0)) for m in pair_matrices()]
    return [pl.BlockSpec(m.shape, lambda b, h, c: (0, 0)) for m in pair_matrices()]


def _launch(call: Call, rec: Recurrence, kernels, in_kinds, inputs, out_kinds, out_shapes, *, reverse: bool):
    """One pallas_call of the TPU or GPU kernel with the pair matrices prepended to the inputs."""
    shape = inputs[in_kinds.index("seq")].shape
    batch, heads, length, size = shape
    block_t = call.block_sizes.block_t
    tpu_kernel, gpu_kernel = kernels
    in_specs = _pair_specs(call) + _specs(call, in_kinds, shape, reverse=reverse)
    out_specs = _specs(call, out_kinds, shape, reverse=reverse)
    options = dict(rec=rec, block_t=block_t, with_starts="starts" in in_kinds)
    if call.target == "gpu":
        kernel, grid = functools.partial(gpu_kernel, **options), (batch, heads)
        extra = dict(
            compiler_params=pltriton.CompilerParams(num_warps=call.block_sizes.num_warps, num_stages=1)
        )
    else:
        kernel = functools.partial(tpu_kernel, **options)
        grid = (batch, heads, length // block_t)
        extra = dict(
            scratch_shapes=[pltpu.VMEM((size, size), jnp.float32)],
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        )
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shapes,
        interpret=call.interpret,
        **extra,
    )(*pair_matrices(), *inputs)


def _forward(call: Call, rec: Recurrence, params, inputs, state, starts):
    batch, heads, length, size = inputs[0].shape
    n_blocks = length // call.block_sizes.block_t
    out_shapes = (
        jax.ShapeDtypeStruct(inputs[2].shape, inputs[2].dtype),  # y in v's dtype
        jax.ShapeDtypeStruct(state.shape, jnp.float32),
        jax.ShapeDtypeStruct((batch, heads, n_blocks * size, size), jnp.float32),
    )
    in_kinds = ("param",) * len(params) + ("seq",) * len(inputs) + ("state",)
    with_starts = () if starts is None else (starts,)
    return _launch(
        call,
        rec,
        (_forward_kernel_tpu, _forward_kernel_gpu),
        in_kinds + ("starts",) * len(with_starts),
        (*params, *inputs, state, *with_starts),
        ("seq", "state", "saved"),
        out_shapes,
        reverse=False,
    )


def _backward(call: Call, rec: Recurrence, params, inputs, dy, saved, d_final, starts, state):
    """With ``starts`` the kernel also takes the initial ``state`` and returns its gradient last."""
    batch, heads, _, size = inputs[0].shape
    with_starts = int(starts is not None)
    out_shapes = (
        *(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs),
        *(jax.ShapeDtypeStruct((batch, heads, 1, size), jnp.float32) for _ in params),
        *(jax.ShapeDtypeStruct(d_final.shape, jnp.float32) for _ in range(1 + with_starts)),
    )
    in_kinds = ("param",) * len(params) + ("seq",) * (len(inputs) + 1) + ("saved", "state")
    out_kinds = ("seq",) * len(inputs) + ("param_grad",) * len(params) + ("state",) * (1 + with_starts)
    return _launch(
        call,
        rec,
        (_backward_kernel_tpu, _backward_kernel_gpu),
        in_kinds + ("starts", "state") * with_starts,
        (*params, *inputs, dy, saved, d_final, *((starts, state) if with_starts else ())),
        out_kinds,
        out_shapes,
        reverse=True,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def run(
    call: Call,
    rec: Recurrence,
    params: tuple,
    inputs: tuple,
    state: jax.Array,
    starts: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The kernels on ``[B, H, T, N]`` inputs (T a multiple of block_t, the value input third: y takes its
    dtype), ``[H, 1, N]`` params and a ``[B, H, value, key]`` float32 state; returns (y, final state).
    ``starts``: None, or ``[B, T, 1]`` float32 0/1 document starts (the family must take them): the state
    returns to ``state`` before each. Differentiable in params, inputs and state (custom VJP)."""
    y, final, _ = _forward(call, rec, params, inputs, state, starts)
    return y, final


def _run_fwd(call: Call, rec: Recurrence, params, inputs, state, starts=None):
    y, final, saved = _forward(call, rec, params, inputs, state, starts)
    return (y, final), (params, inputs, saved, None if starts is None else (starts, state))


def _run_bwd(call: Call, rec: Recurrence, residuals, cotangents):
    params, inputs, saved, documents = residuals
    starts, state = (None, None) if documents is None else documents
    dy, d_final = cotangents
    dy = dy.astype(inputs[2].dtype)
    outputs = _backward(call, rec, params, inputs, dy, saved, d_final, starts, state)
    count = len(inputs) + len(params)
    input_grads, param_grads = outputs[: len(inputs)], outputs[len(inputs) : count]
    d_state, *d_init = outputs[count:]
    if d_init:  # with starts the initial state is read at the call's start and at every document start
        d_state = d_state + d_init[0]
    param_grads = tuple(jnp.sum(g, axis=0).astype(p.dtype) for g, p in zip(param_grads, params, strict=True))
    return param_grads, tuple(input_grads), d_state, None


run.defvjp(_run_fwd, _run_bwd)


# ----------------------------------------------------------------------------------------------------------
# Shared by the public wrappers.


def check_target(target: str, size: int) -> None:
    """Raises a ValueError if ``target`` is unknown or the head size ``size`` does not suit it."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS} or None; got {target!r}")
    if target == "gpu" and (size < SUB_CHUNK or size & (size - 1)):
        raise ValueError(
            f"the Triton kernel needs a head size N that is a power of 2 >= {SUB_CHUNK}; got {size}"
        )
    if target == "tpu" and size % 8:
        raise ValueError(f"the TPU kernel needs a head size N that is a multiple of 8; got {size}")


def check_dtypes(named: dict[str, jax.Array | None], allowed: tuple, expected: str) -> None:
    """Raises a ValueError naming the first array (None: skipped) whose dtype is not in ``allowed``."""
    for name, x in named.items():
        if x is not None and x.dtype not in allowed:
            raise ValueError(f"{name} must be {expected}; got {x.dtype}")


def default_target(target: str | None) -> str:
    """'gpu' on a GPU backend and 'tpu' otherwise (interpret mode on CPU runs TPU semantics)."""
    return target or ("gpu" if jax.default_backend() == "gpu" else "tpu")


def check_starts(starts: jax.Array | None, batch_and_length: tuple[int, int]) -> None:
    """Raises a ValueError unless ``starts`` is None or a bool array ``[B, T]``."""
    if starts is not None and (starts.shape != batch_and_length or starts.dtype != jnp.bool_):
        raise ValueError(
            f"starts must be a bool array [B, T] = {batch_and_length}; got shape {starts.shape}, "
            f"dtype {starts.dtype}"
        )


def starts_column(starts: jax.Array | None, block_t: int) -> jax.Array | None:
    """``[B, T]`` bool -> the kernels' ``[B, T', 1]`` float32 0/1, T padded (no start) to a multiple of
    ``block_t``; None stays None."""
    if starts is None:
        return None
    return jnp.pad(starts.astype(jnp.float32), [(0, 0), (0, -starts.shape[1] % block_t)])[..., None]


def heads_major(xs: tuple[jax.Array, ...], block_t: int) -> tuple[jax.Array, ...]:
    """``[B, T, H, N]`` -> ``[B, H, T', N]`` with T padded with zeros to a multiple of ``block_t``."""
    length = xs[0].shape[1]
    pad = [(0, 0), (0, -length % block_t), (0, 0), (0, 0)]
    return tuple(jnp.swapaxes(jnp.pad(x, pad), 1, 2) for x in xs)


def time_major(y: jax.Array, length: int) -> jax.Array:
    """The inverse of :func:`heads_major`: ``[B, H, T', N]`` -> ``[B, T, H, N]`` without the padding."""
    return jnp.swapaxes(y, 1, 2)[:, :length]
