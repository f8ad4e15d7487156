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


def decays(w: jax.Array, pairs: Pairs) -> Decays:
    """The decays of a sub-chunk from its log decays ``w [S, N]``."""
    between = dot(pairs.between, w)
    causal = jnp.broadcast_to(pairs.causal, between.shape) > 0
    return Decays(
        into=jnp.exp(dot(pairs.before, w)),
        out_of=jnp.exp(dot(pairs.before, w, TN)),
        total=jnp.exp(jnp.sum(w, axis=0, keepdims=True)),
        pairs=jnp.exp(jnp.where(causal, between, -jnp.inf)),
    )


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
    forward: ``(inputs, params, state, pairs) -> (y [S, N], state after)``.
    next_state: ``(inputs, params, state, pairs) -> state after`` (the backward's recomputation).
    backward: ``(inputs, params, state, d_next, dy, pairs) -> (input grads, param grads [1, N], d_state)``
      with ``d_next`` the gradient of the state after the sub-chunk and ``d_state`` that of the one before.
    """

    n_inputs: int
    n_params: int
    forward: Callable[..., tuple[jax.Array, jax.Array]]
    next_state: Callable[..., jax.Array]
    backward: Callable[..., tuple[tuple[jax.Array, ...], tuple[jax.Array, ...], jax.Array]]


def _load(refs, rows) -> tuple[jax.Array, ...]:
    return tuple(ref[rows, :].astype(jnp.float32) for ref in refs)


def _sub_chunk_rows(offset, index: int) -> Any:
    return pl.ds(offset + index * SUB_CHUNK, SUB_CHUNK)


def _forward_block(rec: Recurrence, inputs, y_ref, pairs, params, state, offset, block_t):
    """Runs the sub-chunks of one block (rows ``offset ...`` of the refs); returns the state after it."""
    for i in range(block_t // SUB_CHUNK):
        rows = _sub_chunk_rows(offset, i)
        y, state = rec.forward(_load(inputs, rows), params, state, pairs)
        y_ref[rows, :] = y.astype(y_ref.dtype)
    return state


def _backward_block(
    rec: Recurrence, inputs, dy_ref, grad_refs, pairs, params, state, d_state, offset, block_t
):
    """Backward through one block: recompute its sub-chunk states, then go through them in reverse. Writes
    the input gradients; returns (gradient of the state at the block start, param grads of the block)."""
    starts = [state]
    for i in range(block_t // SUB_CHUNK - 1):
        starts.append(rec.next_state(_load(inputs, _sub_chunk_rows(offset, i)), params, starts[-1], pairs))
    d_params = tuple(jnp.zeros_like(p) for p in params)
    for i in reversed(range(block_t // SUB_CHUNK)):
        rows = _sub_chunk_rows(offset, i)
        (dy,) = _load((dy_ref,), rows)
        grads, param_grads, d_state = rec.backward(_load(inputs, rows), params, starts[i], d_state, dy, pairs)
        for ref, grad in zip(grad_refs, grads, strict=True):
            ref[rows, :] = grad.astype(ref.dtype)
        d_params = tuple(d + g for d, g in zip(d_params, param_grads, strict=True))
    return d_state, d_params


class _Refs(NamedTuple):
    """The refs of one kernel, split by role (see :func:`_split`)."""

    pairs: Pairs
    params: tuple[jax.Array, ...]
    inputs: tuple[Any, ...]
    extra: tuple[Any, ...]  # forward: (state0,); backward: (dy, saved, d_final)
    outputs: tuple[Any, ...]
    scratch: tuple[Any, ...]


def _split(refs, rec: Recurrence, n_extra: int, n_outputs: int) -> _Refs:
    """The flat ref list of a kernel: pair matrices, params, inputs, extra inputs, outputs, scratch."""
    groups, start = [], 0
    for count in (len(Pairs._fields), rec.n_params, rec.n_inputs, n_extra, n_outputs):
        groups.append(tuple(refs[start : start + count]))
        start += count
    pair_refs, param_refs, inputs, extra, outputs = groups
    params = tuple(ref[...].astype(jnp.float32) for ref in param_refs)
    return _Refs(Pairs(*(ref[...] for ref in pair_refs)), params, inputs, extra, outputs, tuple(refs[start:]))


def _forward_kernel_tpu(*refs, rec: Recurrence, block_t: int):
    """Grid (B, H, blocks); the state lives in VMEM scratch across the sequential block axis."""
    parts = _split(refs, rec, 1, 3)
    (state0_ref,), (y_ref, final_ref, saved_ref), (state_ref,) = parts.extra, parts.outputs, parts.scratch
    block = pl.program_id(2)

    @pl.when(block == 0)
    def _():
        state_ref[...] = state0_ref[...]

    saved_ref[...] = state_ref[...]
    state = _forward_block(rec, parts.inputs, y_ref, parts.pairs, parts.params, state_ref[...], 0, block_t)
    state_ref[...] = state

    @pl.when(block == pl.num_programs(2) - 1)
    def _():
        final_ref[...] = state


def _forward_kernel_gpu(*refs, rec: Recurrence, block_t: int):
    """Grid (B, H); one program walks the blocks of its sequence, the state carried in registers."""
    parts = _split(refs, rec, 1, 3)
    (state0_ref,), (y_ref, final_ref, saved_ref) = parts.extra, parts.outputs
    size = state0_ref.shape[0]

    def block(index, state):
        saved_ref[pl.ds(index * size, size), :] = state
        return _forward_block(
            rec, parts.inputs, y_ref, parts.pairs, parts.params, state, index * block_t, block_t
        )

    final_ref[...] = lax.fori_loop(0, y_ref.shape[0] // block_t, block, state0_ref[...])


def _backward_kernel_tpu(*refs, rec: Recurrence, block_t: int):
    """Grid (B, H, blocks in reverse time order); dS lives in VMEM scratch; param grads accumulate in their
    outputs."""
    parts = _split(refs, rec, 3, rec.n_inputs + rec.n_params + 1)
    (dy_ref, saved_ref, d_final_ref), (d_state_ref,) = parts.extra, parts.scratch
    grad_refs, param_grad_refs = parts.outputs[: rec.n_inputs], parts.outputs[rec.n_inputs : -1]
    step = pl.program_id(2)

    @pl.when(step == 0)
    def _():
        d_state_ref[...] = d_final_ref[...]
        for ref in param_grad_refs:
            ref[...] = jnp.zeros(ref.shape, ref.dtype)

    d_state, d_params = _backward_block(
        rec,
        parts.inputs,
        dy_ref,
        grad_refs,
        parts.pairs,
        parts.params,
        saved_ref[...],
        d_state_ref[...],
        0,
        block_t,
    )
    d_state_ref[...] = d_state
    for ref, grad in zip(param_grad_refs, d_params, strict=True):
        ref[...] += grad

    @pl.when(step == pl.num_programs(2) - 1)
    def _():
        parts.outputs[-1][...] = d_state


def _backward_kernel_gpu(*refs, rec: Recurrence, block_t: int):
    """Grid (B, H); one program walks the blocks of its sequence backwards with dS and param grads carried."""
    parts = _split(refs, rec, 3, rec.n_inputs + rec.n_params + 1)
    dy_ref, saved_ref, d_final_ref = parts.extra
    grad_refs, param_grad_refs = parts.outputs[: rec.n_inputs], parts.outputs[rec.n_inputs : -1]
    size, n_blocks = d_final_ref.shape[0], dy_ref.shape[0] // block_t

    def block(step, carry):
        d_state, d_params = carry
        index = n_blocks - 1 - step
        state = saved_ref[pl.ds(index * size, size), :]
        d_state, d_block = _backward_block(
            rec,
            parts.inputs,
            dy_ref,
            grad_refs,
            parts.pairs,
            parts.params,
            state,
            d_state,
            index * block_t,
            block_t,
        )
        return d_state, tuple(d + g for d, g in zip(d_params, d_block, strict=True))

    zeros = tuple(jnp.zeros_like(p) for p in parts.params)
    d_state, d_params = lax.fori_loop(0, n_blocks, block, (d_final_ref[...], zeros))
    parts.outputs[-1][...] = d_state
    for ref, grad in zip(param_grad_refs, d_params, strict=True):
        ref[...] = grad


# ----------------------------------------------------------------------------------------------------------
# pallas_call wiring. Arrays: sequences [B, H, T, N]; params [H, 1, N]; states [B, H, N, N] ([value, key]);
# saved block states [B, H, T / block_t * N, N]; param grads [B, H, 1, N].


@dataclasses.dataclass(frozen=True)
class Call:
    """Static configuration of one kernel launch."""

    target: str
    block_sizes: BlockSizes
    interpret: bool | pltpu.InterpretParams


def _specs(call: Call, kinds: tuple[str, ...], shape, *, reverse: bool):
    """BlockSpecs for arrays of the given kinds: 'param', 'seq' (time-blocked), 'state', 'saved',
    'param_grad'."""
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
    if call.target == "gpu":
        kernel, grid = functools.partial(gpu_kernel, rec=rec, block_t=block_t), (batch, heads)
        extra = dict(
            compiler_params=pltriton.CompilerParams(num_warps=call.block_sizes.num_warps, num_stages=1)
        )
    else:
        kernel = functools.partial(tpu_kernel, rec=rec, block_t=block_t)
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


def _forward(call: Call, rec: Recurrence, params, inputs, state):
    batch, heads, length, size = inputs[0].shape
    n_blocks = length // call.block_sizes.block_t
    out_shapes = (
        jax.ShapeDtypeStruct(inputs[2].shape, inputs[2].dtype),  # y in v's dtype
        jax.ShapeDtypeStruct(state.shape, jnp.float32),
        jax.ShapeDtypeStruct((batch, heads, n_blocks * size, size), jnp.float32),
    )
    in_kinds = ("param",) * len(params) + ("seq",) * len(inputs) + ("state",)
    return _launch(
        call,
        rec,
        (_forward_kernel_tpu, _forward_kernel_gpu),
        in_kinds,
        (*params, *inputs, state),
        ("seq", "state", "saved"),
        out_shapes,
        reverse=False,
    )


def _backward(call: Call, rec: Recurrence, params, inputs, dy, saved, d_final):
    batch, heads, _, size = inputs[0].shape
    out_shapes = (
        *(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs),
        *(jax.ShapeDtypeStruct((batch, heads, 1, size), jnp.float32) for _ in params),
        jax.ShapeDtypeStruct(d_final.shape, jnp.float32),
    )
    in_kinds = ("param",) * len(params) + ("seq",) * (len(inputs) + 1) + ("saved", "state")
    out_kinds = ("seq",) * len(inputs) + ("param_grad",) * len(params) + ("state",)
    return _launch(
        call,
        rec,
        (_backward_kernel_tpu, _backward_kernel_gpu),
        in_kinds,
        (*params, *inputs, dy, saved, d_final),
        out_kinds,
        out_shapes,
        reverse=True,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def run(
    call: Call, rec: Recurrence, params: tuple, inputs: tuple, state: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The kernels on ``[B, H, T, N]`` inputs (T a multiple of block_t, the value input third: y takes its
    dtype), ``[H, 1, N]`` params and a ``[B, H, value, key]`` float32 state; returns (y, final state).
    Differentiable in params, inputs and state (custom VJP)."""
    y, final, _ = _forward(call, rec, params, inputs, state)
    return y, final


def _run_fwd(call: Call, rec: Recurrence, params, inputs, state):
    y, final, saved = _forward(call, rec, params, inputs, state)
    return (y, final), (params, inputs, saved)


def _run_bwd(call: Call, rec: Recurrence, residuals, cotangents):
    params, inputs, saved = residuals
    dy, d_final = cotangents
    *grads, d_state = _backward(call, rec, params, inputs, dy.astype(inputs[2].dtype), saved, d_final)
    input_grads, param_grads = grads[: len(inputs)], grads[len(inputs) :]
    param_grads = tuple(jnp.sum(g, axis=0).astype(p.dtype) for g, p in zip(param_grads, params, strict=True))
    return param_grads, tuple(input_grads), d_state


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


def heads_major(xs: tuple[jax.Array, ...], block_t: int) -> tuple[jax.Array, ...]:
    """``[B, T, H, N]`` -> ``[B, H, T', N]`` with T padded with zeros to a multiple of ``block_t``."""
    length = xs[0].shape[1]
    pad = [(0, 0), (0, -length % block_t), (0, 0), (0, 0)]
    return tuple(jnp.swapaxes(jnp.pad(x, pad), 1, 2) for x in xs)


def time_major(y: jax.Array, length: int) -> jax.Array:
    """The inverse of :func:`heads_major`: ``[B, H, T', N]`` -> ``[B, T, H, N]`` without the padding."""
    return jnp.swapaxes(y, 1, 2)[:, :length]
