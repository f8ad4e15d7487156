"""WKV-5/6 Pallas kernel (Eagle / Finch time mixing), forward and backward, for TPU (Mosaic) and GPU (Triton).

Math per head (state ``S [key, value]``, log decay ``w_t <= 0``, bonus ``u``)::

    y_t[j] = sum_i r_t[i] (u[i] k_t[i] v_t[j] + S[i, j]);   S[i, j] <- exp(w_t[i]) S[i, j] + k_t[i] v_t[j]

Algorithm: chunk-wise. Time is cut in blocks of ``BlockSizes.block_t`` tokens (one grid step on TPU, one
loop iteration on GPU) and each block in sub-chunks of ``SUB_CHUNK`` tokens, processed in order with the
state carried in VMEM / registers. Within a sub-chunk of S tokens, with ``W(a, b)`` the sum of ``w_m`` over
``a < m < b`` per key channel::

    y_t = (r_t exp(W[0, t))) . S0  +  sum_{s<t} (r_t . exp(W(s, t)) k_s) v_s  +  (r_t . u k_t) v_t
    S_S = exp(W[0, S)) S0 + sum_s (exp(W(s, S)) k_s) v_s^T

Every exponent is a sum of log decays over a range of steps, computed as a masked sum of that range only
(a matmul with a 0/1 matrix): it is ``<= 0`` (no overflow, whatever the decay, down to ``-exp(5)`` per step
and below) and carries no cancellation error from a long prefix. The pairwise factors ``exp(W(s, t))`` are
exact per channel: the ``S * S`` pairs (t, s) are laid out as rows of a ``[S*S, N]`` matrix, built with 0/1
selection matmuls so that everything is 2-D (Mosaic and Triton both lower it); pairs with ``s >= t`` get the
exponent ``-inf`` through ``jnp.where`` (``exp`` gives 0, and the hand-written backward multiplies by that 0).

Backward (``custom_vjp``, hand-written kernels): the forward pass stores the state at the start of every
block (``[B, H, T / block_t, N, N]`` float32). The backward kernel runs the blocks in reverse time order with
``dS`` carried; in each block it recomputes the sub-chunk states from the stored one, then goes through the
sub-chunks backwards, giving dr, dk, dv, dw, du and finally the gradient of the initial state.

Layout: the kernels see ``[B, H, T, N]`` (one ``(block_t, N)`` tile per grid step, N the full last dim, as
Mosaic's (8, 128) rule requires) and the state transposed, ``[B, H, value, key]``, so that the per-key decay
scales columns. Inputs float32 or bfloat16; state and accumulation float32; matmuls at HIGHEST precision.
This module imports jax only.
"""

import dataclasses
import functools
from typing import NamedTuple

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
LOG_DECAY_FLOOR = -1e4  # w_log is clamped here (see wkv6)

_HIGHEST = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)
_NN, _NT, _TN = ((1,), (0,)), ((1,), (1,)), ((0,), (0,))  # contracted dims of (lhs, rhs): a@b, a@b.T, a.T@b


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


class _Pairs(NamedTuple):
    """For S = SUB_CHUNK and the pairs p = (t, s) flattened as p = t * S + s.

    row: ``[S*S, S]`` row[p, m] = (m == t);   col: ``[S*S, S]`` col[p, m] = (m == s)
    between: ``[S*S, S]`` (s < m < t);        causal: ``[S*S, 1]`` (s < t)
    before: ``[S, S]`` before[t, m] = (m < t)
    """

    row: jax.Array
    col: jax.Array
    between: jax.Array
    causal: jax.Array
    before: jax.Array


def _pair_matrices(size: int = SUB_CHUNK) -> _Pairs:
    pair = np.arange(size * size)
    t, s, m = (pair // size)[:, None], (pair % size)[:, None], np.arange(size)[None, :]
    mats = (m == t, m == s, (s < m) & (m < t), s < t, m < np.arange(size)[:, None])
    return _Pairs(*(jnp.asarray(x, jnp.float32) for x in mats))


# ----------------------------------------------------------------------------------------------------------
# Kernel bodies. Values are float32; r, k, v, w, dy: [S, N]; u: [1, N]; states: [N(value), N(key)].


def _dot(a: jax.Array, b: jax.Array, contract=_NN) -> jax.Array:
    return lax.dot_general(a, b, (contract, ((), ())), precision=_HIGHEST, preferred_element_type=jnp.float32)


class _Decays(NamedTuple):
    """Per sub-chunk: exp(W[0, t)) [S, N], exp(W(s, S)) [S, N], exp(W[0, S)) [1, N], exp(W(s, t)) [S*S, N]."""

    into: jax.Array
    out_of: jax.Array
    total: jax.Array
    pairs: jax.Array


def _decays(w: jax.Array, pairs: _Pairs) -> _Decays:
    between = _dot(pairs.between, w)
    causal = jnp.broadcast_to(pairs.causal, between.shape) > 0
    return _Decays(
        into=jnp.exp(_dot(pairs.before, w)),
        out_of=jnp.exp(_dot(pairs.before, w, _TN)),
        total=jnp.exp(jnp.sum(w, axis=0, keepdims=True)),
        pairs=jnp.exp(jnp.where(causal, between, -jnp.inf)),
    )


def _next_state(k, v, state_t, decays: _Decays) -> jax.Array:
    return state_t * decays.total + _dot(v, k * decays.out_of, _TN)


def _sub_chunk_forward(r, k, v, w, u, state_t, pairs: _Pairs):
    """Outputs ``y [S, N]`` of one sub-chunk and the transposed state after it."""
    decays = _decays(w, pairs)
    pair_scores = jnp.sum(_dot(pairs.row, r) * _dot(pairs.col, k) * decays.pairs, axis=1, keepdims=True)
    scores = _dot(pairs.row, pair_scores * pairs.col, _TN)  # [S(t), S(s)]
    bonus = jnp.sum(r * u * k, axis=1, keepdims=True)
    y = _dot(r * decays.into, state_t, _NT) + _dot(scores, v) + bonus * v
    return y, _next_state(k, v, state_t, decays)


def _sub_chunk_backward(r, k, v, w, u, state_t, d_next, dy, pairs: _Pairs):
    """Gradients of one sub-chunk given dy and ``d_next`` (of the state after it); returns
    ``(dr, dk, dv, dw, du [1, N], d_state)`` with ``d_state`` the gradient of the state before it."""
    decays = _decays(w, pairs)
    r_rows, k_cols = _dot(pairs.row, r), _dot(pairs.col, k)
    pair_scores = jnp.sum(r_rows * k_cols * decays.pairs, axis=1, keepdims=True)
    scores = _dot(pairs.row, pair_scores * pairs.col, _TN)
    bonus = jnp.sum(r * u * k, axis=1, keepdims=True)
    q, k_out = r * decays.into, k * decays.out_of

    dq = _dot(dy, state_t)  # through y = q @ S
    dk_out = _dot(v, d_next)  # through S_next += k_out^T v
    d_bonus = jnp.sum(dy * v, axis=1, keepdims=True)
    d_pair_scores = jnp.sum(_dot(pairs.row, _dot(dy, v, _NT)) * pairs.col, axis=1, keepdims=True)
    d_pairs = d_pair_scores * decays.pairs  # [S*S, N], 0 where s >= t
    d_total = jnp.sum(d_next * state_t, axis=0, keepdims=True) * decays.total

    dr = dq * decays.into + _dot(pairs.row, d_pairs * k_cols, _TN) + d_bonus * u * k
    dk = dk_out * decays.out_of + _dot(pairs.col, d_pairs * r_rows, _TN) + d_bonus * u * r
    dv = _dot(scores, dy, _TN) + bonus * dy + _dot(k_out, d_next, _NT)
    # Each exponent is a 0/1 matrix times w: its gradient goes back through the transposed matrix.
    dw = (
        _dot(pairs.between, d_pairs * r_rows * k_cols, _TN)
        + _dot(pairs.before, dq * q, _TN)
        + _dot(pairs.before, dk_out * k_out)
        + d_total
    )
    du = jnp.sum(d_bonus * r * k, axis=0, keepdims=True)
    d_state = d_next * decays.total + _dot(dy, q, _TN)
    return dr, dk, dv, dw, du, d_state


def _load(refs, rows) -> tuple[jax.Array, ...]:
    return tuple(ref[rows, :].astype(jnp.float32) for ref in refs)


def _forward_block(inputs, y_ref, pairs, u, state_t, offset, block_t):
    """Runs the sub-chunks of one block (rows ``offset ...`` of the refs); returns the state after it."""
    for i in range(block_t // SUB_CHUNK):
        rows = pl.ds(offset + i * SUB_CHUNK, SUB_CHUNK)
        y, state_t = _sub_chunk_forward(*_load(inputs, rows), u, state_t, pairs)
        y_ref[rows, :] = y.astype(y_ref.dtype)
    return state_t


def _backward_block(inputs, dy_ref, grad_refs, pairs, u, state_t, d_state, offset, block_t):
    """Backward through one block: recompute its sub-chunk states, then go through them in reverse.
    Writes dr, dk, dv, dw; returns (gradient of the state at the block start, du of the block)."""
    starts = [state_t]
    for i in range(block_t // SUB_CHUNK - 1):
        _, k, v, w = _load(inputs, pl.ds(offset + i * SUB_CHUNK, SUB_CHUNK))
        starts.append(_next_state(k, v, starts[-1], _decays(w, pairs)))
    du = jnp.zeros_like(u)
    for i in reversed(range(block_t // SUB_CHUNK)):
        rows = pl.ds(offset + i * SUB_CHUNK, SUB_CHUNK)
        (dy,) = _load((dy_ref,), rows)
        *grads, du_i, d_state = _sub_chunk_backward(*_load(inputs, rows), u, starts[i], d_state, dy, pairs)
        for ref, grad in zip(grad_refs, grads, strict=True):
            ref[rows, :] = grad.astype(ref.dtype)
        du = du + du_i
    return d_state, du


def _read_pairs(pair_refs) -> _Pairs:
    return _Pairs(*(ref[...] for ref in pair_refs))


def _read_u(u_ref) -> jax.Array:
    return u_ref[...].astype(jnp.float32)


def _forward_kernel_tpu(*refs, block_t):
    """Grid (B, H, blocks); the state lives in VMEM scratch across the sequential block axis."""
    pair_refs, (u_ref, *inputs, state0_ref), (y_ref, final_ref, saved_ref), (state_ref,) = _split(refs, 6, 3)
    block = pl.program_id(2)

    @pl.when(block == 0)
    def _():
        state_ref[...] = state0_ref[...]

    saved_ref[...] = state_ref[...]
    state_t = _forward_block(
        inputs, y_ref, _read_pairs(pair_refs), _read_u(u_ref), state_ref[...], 0, block_t
    )
    state_ref[...] = state_t

    @pl.when(block == pl.num_programs(2) - 1)
    def _():
        final_ref[...] = state_t


def _forward_kernel_gpu(*refs, block_t):
    """Grid (B, H); one program walks the blocks of its sequence, the state carried in registers."""
    pair_refs, (u_ref, *inputs, state0_ref), (y_ref, final_ref, saved_ref), () = _split(refs, 6, 3)
    pairs, u, size = _read_pairs(pair_refs), _read_u(u_ref), state0_ref.shape[0]

    def block(index, state_t):
        saved_ref[pl.ds(index * size, size), :] = state_t
        return _forward_block(inputs, y_ref, pairs, u, state_t, index * block_t, block_t)

    final_ref[...] = lax.fori_loop(0, y_ref.shape[0] // block_t, block, state0_ref[...])


def _backward_kernel_tpu(*refs, block_t):
    """Grid (B, H, blocks in reverse time order); dS lives in VMEM scratch; du accumulates in its output."""
    pair_refs, ins, outs, (d_state_ref,) = _split(refs, 8, 6)
    u_ref, *inputs, dy_ref, saved_ref, d_final_ref = ins
    *grad_refs, du_ref, d_state0_ref = outs
    step = pl.program_id(2)

    @pl.when(step == 0)
    def _():
        d_state_ref[...] = d_final_ref[...]
        du_ref[...] = jnp.zeros(du_ref.shape, du_ref.dtype)

    d_state, du = _backward_block(
        inputs,
        dy_ref,
        grad_refs,
        _read_pairs(pair_refs),
        _read_u(u_ref),
        saved_ref[...],
        d_state_ref[...],
        0,
        block_t,
    )
    d_state_ref[...] = d_state
    du_ref[...] += du

    @pl.when(step == pl.num_programs(2) - 1)
    def _():
        d_state0_ref[...] = d_state


def _backward_kernel_gpu(*refs, block_t):
    """Grid (B, H); one program walks the blocks of its sequence backwards with dS and du carried."""
    pair_refs, ins, outs, () = _split(refs, 8, 6)
    u_ref, *inputs, dy_ref, saved_ref, d_final_ref = ins
    *grad_refs, du_ref, d_state0_ref = outs
    pairs, u, size = _read_pairs(pair_refs), _read_u(u_ref), d_final_ref.shape[0]
    n_blocks = dy_ref.shape[0] // block_t

    def block(step, carry):
        d_state, du = carry
        index = n_blocks - 1 - step
        state_t = saved_ref[pl.ds(index * size, size), :]
        d_state, du_block = _backward_block(
            inputs, dy_ref, grad_refs, pairs, u, state_t, d_state, index * block_t, block_t
        )
        return d_state, du + du_block

    d_state, du = lax.fori_loop(0, n_blocks, block, (d_final_ref[...], jnp.zeros_like(u)))
    d_state0_ref[...] = d_state
    du_ref[...] = du


def _split(refs, n_inputs, n_outputs):
    """(pair refs, other inputs, outputs, scratch) from the flat ref list of a kernel."""
    n_pairs = len(_Pairs._fields)
    ins = refs[n_pairs : n_pairs + n_inputs]
    outs = refs[n_pairs + n_inputs : n_pairs + n_inputs + n_outputs]
    return refs[:n_pairs], ins, outs, refs[n_pairs + n_inputs + n_outputs :]


# ----------------------------------------------------------------------------------------------------------
# pallas_call wiring. Arrays: sequences [B, H, T, N]; u [H, 1, N]; states [B, H, N, N] (transposed);
# saved block states [B, H, T / block_t * N, N].


@dataclasses.dataclass(frozen=True)
class _Call:
    """Static configuration of one kernel launch."""

    target: str
    block_sizes: BlockSizes
    interpret: bool | pltpu.InterpretParams


def _specs(call: _Call, kinds: tuple[str, ...], shape, *, reverse: bool):
    """BlockSpecs for arrays of the given kinds: 'u', 'seq' (time-blocked), 'state', 'saved', 'du'."""
    _, _, length, size = shape
    block_t = call.block_sizes.block_t
    n_blocks = length // block_t
    if call.target == "gpu":  # grid (B, H): whole sequences per program
        per_kind = {
            "u": pl.BlockSpec((None, 1, size), lambda b, h: (h, 0, 0)),
            "seq": pl.BlockSpec((None, None, length, size), lambda b, h: (b, h, 0, 0)),
            "state": pl.BlockSpec((None, None, size, size), lambda b, h: (b, h, 0, 0)),
            "saved": pl.BlockSpec((None, None, n_blocks * size, size), lambda b, h: (b, h, 0, 0)),
            "du": pl.BlockSpec((None, None, 1, size), lambda b, h: (b, h, 0, 0)),
        }
    else:  # grid (B, H, blocks): one block of time per step, in reverse order for the backward pass

        def time_block(c):
            return n_blocks - 1 - c if reverse else c

        per_kind = {
            "u": pl.BlockSpec((None, 1, size), lambda b, h, c: (h, 0, 0)),
            "seq": pl.BlockSpec((None, None, block_t, size), lambda b, h, c: (b, h, time_block(c), 0)),
            "state": pl.BlockSpec((None, None, size, size), lambda b, h, c: (b, h, 0, 0)),
            "saved": pl.BlockSpec((None, None, size, size), lambda b, h, c: (b, h, time_block(c), 0)),
            "du": pl.BlockSpec((None, None, 1, size), lambda b, h, c: (b, h, 0, 0)),
        }
    return [per_kind[kind] for kind in kinds]


def _pair_specs(call: _Call):
    pairs = _pair_matrices()
    if call.target == "gpu":
        return [pl.BlockSpec(m.shape, lambda b, h: (0, 0)) for m in pairs]
    return [pl.BlockSpec(m.shape, lambda b, h, c: (0, 0)) for m in pairs]


def _launch(call: _Call, kernels, in_kinds, inputs, out_kinds, out_shapes, *, reverse: bool):
    """One pallas_call of the TPU or GPU kernel with the pair matrices prepended to the inputs."""
    shape = inputs[1].shape  # the first sequence input
    batch, heads, length, size = shape
    block_t = call.block_sizes.block_t
    tpu_kernel, gpu_kernel = kernels
    in_specs = _pair_specs(call) + _specs(call, in_kinds, shape, reverse=reverse)
    out_specs = _specs(call, out_kinds, shape, reverse=reverse)
    if call.target == "gpu":
        kernel, grid = functools.partial(gpu_kernel, block_t=block_t), (batch, heads)
        extra = dict(
            compiler_params=pltriton.CompilerParams(num_warps=call.block_sizes.num_warps, num_stages=1)
        )
    else:
        kernel, grid = functools.partial(tpu_kernel, block_t=block_t), (batch, heads, length // block_t)
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
    )(*_pair_matrices(), *inputs)


def _forward(call: _Call, u, r, k, v, w, state_t):
    batch, heads, length, size = r.shape
    n_blocks = length // call.block_sizes.block_t
    out_shapes = (
        jax.ShapeDtypeStruct(v.shape, v.dtype),
        jax.ShapeDtypeStruct(state_t.shape, jnp.float32),
        jax.ShapeDtypeStruct((batch, heads, n_blocks * size, size), jnp.float32),
    )
    return _launch(
        call,
        (_forward_kernel_tpu, _forward_kernel_gpu),
        ("u", "seq", "seq", "seq", "seq", "state"),
        (u, r, k, v, w, state_t),
        ("seq", "state", "saved"),
        out_shapes,
        reverse=False,
    )


def _backward(call: _Call, u, r, k, v, w, dy, saved, d_final):
    batch, heads, _, size = r.shape
    out_shapes = (
        *(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (r, k, v, w)),
        jax.ShapeDtypeStruct((batch, heads, 1, size), jnp.float32),
        jax.ShapeDtypeStruct(d_final.shape, jnp.float32),
    )
    return _launch(
        call,
        (_backward_kernel_tpu, _backward_kernel_gpu),
        ("u", "seq", "seq", "seq", "seq", "seq", "saved", "state"),
        (u, r, k, v, w, dy, saved, d_final),
        ("seq", "seq", "seq", "seq", "du", "state"),
        out_shapes,
        reverse=True,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _wkv6_heads_major(call: _Call, u, r, k, v, w, state_t):
    """``[B, H, T, N]`` inputs (T a multiple of block_t), transposed state; returns (y, final state)."""
    y, final, _ = _forward(call, u, r, k, v, w, state_t)
    return y, final


def _wkv6_fwd(call: _Call, u, r, k, v, w, state_t):
    y, final, saved = _forward(call, u, r, k, v, w, state_t)
    return (y, final), (u, r, k, v, w, saved)


def _wkv6_bwd(call: _Call, residuals, cotangents):
    u, r, k, v, w, saved = residuals
    dy, d_final = cotangents
    dr, dk, dv, dw, du, d_state0 = _backward(call, u, r, k, v, w, dy.astype(v.dtype), saved, d_final)
    return jnp.sum(du, axis=0).astype(u.dtype), dr, dk, dv, dw, d_state0


_wkv6_heads_major.defvjp(_wkv6_fwd, _wkv6_bwd)


# ----------------------------------------------------------------------------------------------------------
# Public wrapper.


def _check_inputs(r, k, v, w_log, u, state, target: str) -> None:
    """Raises a ValueError naming the argument that does not fit ``[B, T, H, N]`` inputs."""
    if r.ndim != 4:
        raise ValueError(f"r must be [B, T, H, N]; got shape {r.shape}")
    batch, _, heads, size = r.shape
    for name, x in (("k", k), ("v", v), ("w_log", w_log)):
        if x.shape != r.shape:
            raise ValueError(f"{name} must have r's shape [B, T, H, N] = {r.shape}; got {x.shape}")
    if u.shape != (heads, size):
        raise ValueError(f"u must be [H, N] = {(heads, size)}; got {u.shape}")
    if state is not None and state.shape != (batch, heads, size, size):
        raise ValueError(f"state must be [B, H, N, N] = {(batch, heads, size, size)}; got {state.shape}")
    for name, x in (("r", r), ("k", k), ("v", v), ("u", u)):
        if x.dtype not in INPUT_DTYPES:
            raise ValueError(f"{name} must be float32 or bfloat16; got {x.dtype}")
    for name, x in (("w_log", w_log), ("state", state)):
        if x is not None and x.dtype != jnp.float32:
            raise ValueError(f"{name} must be float32; got {x.dtype}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS} or None; got {target!r}")
    if target == "gpu" and (size < SUB_CHUNK or size & (size - 1)):
        raise ValueError(
            f"the Triton kernel needs a head size N that is a power of 2 >= {SUB_CHUNK}; got {size}"
        )
    if target == "tpu" and size % 8:
        raise ValueError(f"the TPU kernel needs a head size N that is a multiple of 8; got {size}")


@functools.partial(jax.jit, static_argnames=("chunk_size", "num_warps", "target", "interpret"))
def wkv6(
    r: jax.Array,
    k: jax.Array,
    v: jax.Array,
    w_log: jax.Array,
    u: jax.Array,
    state: jax.Array | None = None,
    *,
    chunk_size: int = DEFAULT_BLOCK_T,
    num_warps: int = 4,
    target: str | None = None,
    interpret: bool | pltpu.InterpretParams = False,
) -> tuple[jax.Array, jax.Array]:
    """WKV-5/6 with the Pallas kernels; differentiable (custom VJP) in every input and the initial state.

    Args:
      r, k, v: ``[B, T, H, N]`` float32 or bfloat16.
      w_log: ``[B, T, H, N]`` float32 log decay, ``<= 0`` (``-inf`` allowed).
      u: ``[H, N]`` bonus (float32 or bfloat16).
      state: ``[B, H, N, N]`` float32 initial state ``[key, value]``, or None for zeros.
      chunk_size: ``BlockSizes.block_t``, tokens per grid step (a power of 2, >= 16).
      num_warps: Triton warps per program (GPU).
      target: 'tpu' (Mosaic, sequential grid over blocks) or 'gpu' (Triton, loop over blocks); None picks
        'gpu' on a GPU backend and 'tpu' otherwise (interpret mode on CPU runs TPU semantics).
      interpret: run in the Pallas interpreter (True, or ``pltpu.InterpretParams`` for TPU checks).

    Returns:
      ``y [B, T, H, N]`` in ``v.dtype`` and the final float32 state ``[B, H, N, N]``.
    """
    target = target or ("gpu" if jax.default_backend() == "gpu" else "tpu")
    _check_inputs(r, k, v, w_log, u, state, target)
    call = _Call(target, BlockSizes(chunk_size, num_warps), interpret)
    batch, length, heads, size = r.shape
    if state is None:
        state = jnp.zeros((batch, heads, size, size), jnp.float32)
    # Padding with k = 0 and w = 0 (decay 1) leaves the state unchanged; the padded outputs are dropped.
    pad = [(0, 0), (0, -length % chunk_size), (0, 0), (0, 0)]
    # exp(-1e4) is 0 as exp(-inf) is, but the 0/1 matmuls would turn -inf into 0 * -inf = NaN.
    w_log = jnp.maximum(w_log, LOG_DECAY_FLOOR)
    r, k, v, w_log = (jnp.swapaxes(jnp.pad(x, pad), 1, 2) for x in (r, k, v, w_log))
    y, final_t = _wkv6_heads_major(call, u.reshape(heads, 1, size), r, k, v, w_log, jnp.swapaxes(state, 2, 3))
    return jnp.swapaxes(y, 1, 2)[:, :length], jnp.swapaxes(final_t, 2, 3)


# ----------------------------------------------------------------------------------------------------------
# Plain jnp reference (float32 scan, one step per token).


def wkv6_float32_reference(r, k, v, w_log, u, state=None) -> tuple[jax.Array, jax.Array]:
    """The recurrence token by token with ``lax.scan`` in float32; shapes and dtypes as :func:`wkv6`."""
    batch, _, heads, size = r.shape
    if state is None:
        state = jnp.zeros((batch, heads, size, size), jnp.float32)
    bonus = u.astype(jnp.float32)[:, :, None]

    def step(s, xs):
        r_t, k_t, v_t, w_t = xs
        kv = k_t[..., :, None] * v_t[..., None, :]
        return jnp.exp(w_t)[..., None] * s + kv, jnp.einsum("bhi,bhij->bhj", r_t, bonus * kv + s)

    xs = tuple(jnp.swapaxes(x, 0, 1).astype(jnp.float32) for x in (r, k, v, w_log))
    final, ys = lax.scan(step, state.astype(jnp.float32), xs)
    return jnp.swapaxes(ys, 0, 1).astype(v.dtype), final
