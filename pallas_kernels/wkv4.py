"""WKV-4 Pallas kernel: forward and backward, TPU (Mosaic) and GPU (Triton), one kernel body for both.

The recurrence, per batch row and channel, with log decay ``w <= 0`` and bonus ``u``::

    y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (same with v = 1)

The state is the stable triple ``(num, den, max_exp)`` of the official kernels: the sums stored scaled by
``e^{-max_exp}``, ``max_exp`` the running maximum exponent ``max(max_exp + w, k)``; float32 ``[B, C]``.

Grid: one program per (batch row, block of ``block_c`` channels); each program walks the whole sequence,
``block_t`` steps at a time (statically unrolled), carrying the state in float32 registers.

- Forward: ``y`` and the final state. The decay is added to the exponent as a compensated (Kahan) sum, as in
  ``rwkv_jax.wkv.v4.wkv4_recurrent``, so decays near 1 do not drift over long sequences.
- Backward: like the official RWKV-4 CUDA backward, the kernel first runs the forward again, here keeping
  the state before every token in a workspace, then walks back carrying ``dL/d(num, den)`` in the scale of
  the stored state (``mu``; its decay is compensated like the forward's). It also takes a cotangent for the
  final state and returns the cotangent of the initial state. ``max_exp`` is piecewise linear in the
  inputs: its cotangent goes to ``k_t`` of the token that set the running maximum, and to ``w`` for every
  step it was carried.

Targets: TPU programs take 128 lanes of channels and read/write time in aligned (16, 128) chunks (one bf16
tile, two float32 tiles); the workspace is VMEM scratch. GPU (Triton) programs take a power-of-2 number of
channels and read/write one time step at a time; the workspace is an extra output in HBM.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.sub_chunks import check_starts

Target = Literal["tpu", "gpu"]
Array = jax.Array
State = tuple[Array, Array, Array]  # (num, den, max_exp), each [B, C] float32

# The official CUDA kernel's "MIN_VALUE": the running maximum of the empty state.
INITIAL_MAX_EXP = -1e38
TPU_LANES = 128
TPU_TIME_TILE = 16  # rows of one bf16 VMEM tile; two float32 tiles
GPU_NUM_WARPS = 1  # one program is one block of channels walking time: keep it to one warp


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """How the work is cut; no effect on the numerics.

    block_c: channels per program (lanes). TPU: a multiple of 128. GPU: a power of 2.
    block_t: time steps per statically unrolled chunk. TPU: a multiple of 16. GPU: a power of 2.
    """

    block_c: int
    block_t: int

    def __post_init__(self):
        for name in ("block_c", "block_t"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BlockSizes.{name} must be a positive int; got {value!r}")

    def check_for(self, target: Target) -> None:
        """Raises ValueError unless the sizes lower on ``target``."""
        if target == "tpu":
            if self.block_c % TPU_LANES or self.block_t % TPU_TIME_TILE:
                multiples = f"block_c a multiple of {TPU_LANES} and block_t of {TPU_TIME_TILE}"
                raise ValueError(f"on TPU the block sizes must be {multiples}; got {self}")
        elif target == "gpu":
            if not (_is_power_of_2(self.block_c) and _is_power_of_2(self.block_t)):
                raise ValueError(f"on GPU (Triton) block_c and block_t must be powers of 2; got {self}")
        else:
            raise ValueError(f"target must be 'tpu' or 'gpu'; got {target!r}")

    @classmethod
    def default(cls, target: Target, channels: int) -> "BlockSizes":
        if target == "tpu":
            return cls(block_c=TPU_LANES, block_t=TPU_TIME_TILE)
        # One channel per thread of a single warp, as the official CUDA kernel has one thread per channel.
        return cls(block_c=min(32, pl.next_power_of_2(channels)), block_t=8)


def _is_power_of_2(n: int) -> bool:
    return n & (n - 1) == 0


# ---------------------------------------------------------------------------------------------------------
# Kernel bodies. Every row is a (1, block_c) float32 array: one time step of one block of channels.


def _read_rows(ref, start: Array, count: int, block_t: int, per_row: bool) -> list[Array]:
    """Rows ``start .. start + count - 1`` of a (T_padded, block_c) ref, as float32."""
    if per_row:
        return [ref[pl.ds(start + i, 1), :].astype(jnp.float32) for i in range(count)]
    chunk = ref[pl.ds(start, block_t), :].astype(jnp.float32)  # aligned: start is a multiple of block_t
    # Pick row i with a masked sublane sum: no unaligned sublane slice for Mosaic to relayout.
    index = jax.lax.broadcasted_iota(jnp.int32, chunk.shape, 0)
    return [jnp.sum(jnp.where(index == i, chunk, 0.0), axis=0, keepdims=True) for i in range(count)]


def _write_rows(ref, start: Array, rows: Sequence[Array], block_t: int, per_row: bool) -> None:
    """Writes ``rows`` at ``start`` (rows past ``len(rows)`` of an aligned chunk are zero-filled)."""
    if per_row:
        for i, row in enumerate(rows):
            ref[pl.ds(start + i, 1), :] = row.astype(ref.dtype)
        return
    # Assemble the chunk with selects, not a sublane concatenate, which Mosaic may reject.
    index = jax.lax.broadcasted_iota(jnp.int32, (block_t, rows[0].shape[1]), 0)
    chunk = jnp.zeros(index.shape, jnp.float32)
    for i, row in enumerate(rows):
        chunk = jnp.where(index == i, row, chunk)
    ref[pl.ds(start, block_t), :] = chunk.astype(ref.dtype)


def _sweep(
    step: Callable, carry: Any, in_refs, out_refs, *, length: int, block_t: int, per_row: bool, reverse: bool
):
    """Runs ``step(carry, *in_rows) -> (carry, out_rows)`` over time steps ``0 .. length-1`` (or back).

    Full chunks go through a ``fori_loop``; the last ``length % block_t`` steps are one shorter chunk.
    """
    full_chunks, tail = divmod(length, block_t)

    def chunk(index: Array, carry: Any, count: int) -> Any:
        if isinstance(index, int):
            start = index * block_t
        else:  # int32 whether or not jax_enable_x64 is set: Mosaic rejects mixed index widths
            start = pl.multiple_of(index.astype(jnp.int32) * jnp.int32(block_t), block_t)
        ins = [_read_rows(ref, start, count, block_t, per_row) for ref in in_refs]
        outs: list[Any] = [None] * count
        for i in reversed(range(count)) if reverse else range(count):
            carry, outs[i] = step(carry, *(rows[i] for rows in ins))
        for j, ref in enumerate(out_refs):
            _write_rows(ref, start, [out[j] for out in outs], block_t, per_row)
        return carry

    def full(i: Array, carry: Any) -> Any:
        return chunk(full_chunks - 1 - i if reverse else i, carry, block_t)

    if tail and reverse:
        carry = chunk(full_chunks, carry, tail)
    carry = jax.lax.fori_loop(jnp.int32(0), jnp.int32(full_chunks), full, carry)
    if tail and not reverse:
        carry = chunk(full_chunks, carry, tail)
    return carry


def _output(u: Array, k: Array, v: Array, num: Array, den: Array, max_exp: Array, low: Array | float):
    """``(y, e_state, e_token, denominator)`` of token ``(k, v)`` against ``(num, den) e^{max_exp + low}``."""
    top = jnp.maximum(max_exp, u + k)
    e_state = jnp.exp((max_exp - top) + low)
    e_token = jnp.exp((k - top) + u)
    denominator = e_state * den + e_token
    return (e_state * num + e_token * v) / denominator, e_state, e_token, denominator


def _forward_step(w: Array, u: Array, initial, *, emit_states: bool) -> Callable:
    """Step on carry ``(num, den, max_exp, low)``; emits ``(y,)``, or the state before the token (before a
    document start resets it: the backward needs the scale the previous token left).

    ``initial``: the carry a document start resets to, or None (no ``starts`` row after ``k, v``)."""

    def step(carry, k, v, *start):
        emitted = _folded(carry) if emit_states else None
        if start:
            carry = _restart(start[0], initial, carry)
        num, den, max_exp, low = carry
        if not emit_states:
            emitted = (_output(u, k, v, num, den, max_exp, low)[0],)
        # Kahan: the decay goes into the exponent max_exp + low; num, den move only when k takes the max.
        decay = w + low
        decayed = max_exp + decay
        new_max = jnp.maximum(decayed, k)
        rest = (max_exp - new_max) + decay
        state_wins = decayed >= k
        new_low = jnp.where(state_wins, rest, 0.0)
        e_state = jnp.where(state_wins, 1.0, jnp.exp(rest))
        e_token = jnp.exp((k - new_max) - new_low)
        return (e_state * num + e_token * v, e_state * den + e_token, new_max, new_low), emitted

    return step


def _restart(start: Array, initial: tuple, carry: tuple) -> tuple:
    """``initial`` where the row ``start`` (1.0: a document starts at this token) is set, else ``carry``."""
    return tuple(jnp.where(start > 0, a, b) for a, b in zip(initial, carry, strict=True))


def _backward_step(w: Array, u: Array, initial) -> Callable:
    """Reverse step on carry ``(mu_num, mu_den, mu_low, g_max, max_after, du, dw[, d_num, d_den, d_max])``;
    emits ``(dk, dv)``.

    ``mu_* e^{mu_low}`` is dL/d(unscaled sum after the token) times ``e^{max_after}``: as in the forward, a
    decay that leaves the maximum in place goes into the exponent ``mu_low`` rather than being multiplied
    in as a float32 factor ~ 1. ``g_max`` is the cotangent of the running maximum after the token; the
    other inputs are the token and the stored state before it. With ``initial`` (the call's state, with
    ``starts``) a token that starts a document read ``initial``: the gradient of the state before it goes
    to ``initial``'s, summed in the carry's last three (``d_num, d_den, d_max``), and nothing flows on to the
    tokens before it.
    """

    def step(carry, k, v, gy, num, den, max_exp, *start):
        mu_num, mu_den, mu_low, g_max, max_after, du, dw, *d_initial = carry
        stored_max = max_exp  # the scale the previous token left (before any reset)
        if start:
            num, den, max_exp = _restart(start[0], initial, (num, den, max_exp))
        y, e_state, e_token, denominator = _output(u, k, v, num, den, max_exp, 0.0)
        g = gy / denominator
        g_bonus = g * e_token * (v - y)  # dL/du of this token's output (and part of dL/dk)
        rest = (max_exp - max_after) + w  # log of the step's decay between the stored scales, <= ~0
        e_k = jnp.exp((k - max_after) + mu_low)
        token_set_max = max_after == k  # the forward's max(max_exp + w, k) took k
        dk = g_bonus + e_k * (mu_num * v + mu_den) + jnp.where(token_set_max, g_max, 0.0)
        dv = g * e_token + mu_num * e_k
        dw = (
            dw + jnp.exp(rest + mu_low) * (mu_num * num + mu_den * den) + jnp.where(token_set_max, 0.0, g_max)
        )
        # Back to before the token: mu <- e^{rest} mu + (dL/d(num, den) of y_t).
        low_before = jnp.where(token_set_max, 0.0, mu_low + rest)
        factor = jnp.where(token_set_max, jnp.exp(rest + mu_low), 1.0)
        g_state = g * e_state * jnp.exp(-low_before)
        mu = (factor * mu_num + g_state, factor * mu_den - g_state * y, low_before)
        g_max = jnp.where(token_set_max, 0.0, g_max)
        if start:  # the state before a start is the initial one: its gradient goes there
            read = _state_grad(*mu, g_max, (num, den))
            d_initial = [d + jnp.where(start[0] > 0, x, 0.0) for d, x in zip(d_initial, read, strict=True)]
            zero = jnp.zeros_like(g_max)
            *mu, g_max = _restart(start[0], (zero,) * 4, (*mu, g_max))
        return (*mu, g_max, stored_max, du + g_bonus, dw, *d_initial), (dk, dv)

    return step


def _state_grad(mu_num, mu_den, mu_low, g_max, state) -> tuple[Array, Array, Array]:
    """The gradient of a stored triple ``state = (num, den)`` (its max_exp implied) from the backward carry:
    ``g_max`` is what a change of max_exp does beyond rescaling the stored sums."""
    d_num, d_den = mu_num * jnp.exp(mu_low), mu_den * jnp.exp(mu_low)
    return d_num, d_den, d_num * state[0] + d_den * state[1] + g_max


def _initial_carry(num_ref, den_ref, max_exp_ref) -> tuple[Array, Array, Array, Array]:
    max_exp = max_exp_ref[...]
    return num_ref[...], den_ref[...], max_exp, jnp.zeros_like(max_exp)


def _folded(carry) -> tuple[Array, Array, Array]:
    """The forward carry as a plain triple: the Kahan low part folded into num and den."""
    num, den, max_exp, low = carry
    return num * jnp.exp(low), den * jnp.exp(low), max_exp


def _split_starts(refs: tuple, with_starts: bool) -> tuple[tuple, Any]:
    """``(refs without the starts ref, the starts ref or None)``; the starts ref is the last input."""
    return (refs[1:], refs[0]) if with_starts else (refs, None)


def _forward_kernel(*refs, length: int, block_t: int, per_row: bool, with_starts: bool):
    w_ref, u_ref, k_ref, v_ref, num_ref, den_ref, max_exp_ref, *rest = refs  # inputs [starts], outputs
    (y_ref, num_out, den_out, max_exp_out), starts_ref = _split_starts(rest, with_starts)
    initial = _initial_carry(num_ref, den_ref, max_exp_ref)
    step = _forward_step(w_ref[...], u_ref[...], initial, emit_states=False)
    sweep = functools.partial(_sweep, length=length, block_t=block_t, per_row=per_row, reverse=False)
    in_refs = (k_ref, v_ref) + (() if starts_ref is None else (starts_ref,))
    carry = sweep(step, initial, in_refs, (y_ref,))
    num_out[...], den_out[...], max_exp_out[...] = _folded(carry)


def _backward_kernel(*refs, length: int, block_t: int, per_row: bool, with_starts: bool):
    (
        w_ref,
        u_ref,
        k_ref,
        v_ref,
        gy_ref,
        num_ref,
        den_ref,
        max_exp_ref,
        g_num_ref,
        g_den_ref,
        g_max_ref,
        *rest,
    ) = refs  # inputs [starts], outputs, workspace (the state before every token)
    outputs, starts_ref = _split_starts(rest, with_starts)
    dk_ref, dv_ref, dw_ref, du_ref, d_num_ref, d_den_ref, d_max_ref, *workspace = outputs
    w, u = w_ref[...], u_ref[...]
    sweep = functools.partial(_sweep, length=length, block_t=block_t, per_row=per_row)
    initial = _initial_carry(num_ref, den_ref, max_exp_ref)
    mask = () if starts_ref is None else (starts_ref,)
    forward = _forward_step(w, u, initial, emit_states=True)
    carry = sweep(forward, initial, (k_ref, v_ref, *mask), workspace, reverse=False)
    num, den, max_exp = _folded(carry)
    g_num, g_den = g_num_ref[...], g_den_ref[...]
    # What a change of max_exp does beyond rescaling the stored sums.
    g_max = g_max_ref[...] - g_num * num - g_den * den
    zero = jnp.zeros_like(num)
    carry = (g_num, g_den, zero, g_max, max_exp, zero, zero) + (zero,) * (3 * len(mask))
    backward = _backward_step(w, u, initial[:3] if mask else None)
    mu_num, mu_den, mu_low, g_max, _, du, dw, *d_initial = sweep(
        backward, carry, (k_ref, v_ref, gy_ref, *workspace, *mask), (dk_ref, dv_ref), reverse=True
    )
    grads = _state_grad(mu_num, mu_den, mu_low, g_max, (num_ref[...], den_ref[...]))
    if d_initial:  # read again at every document start
        grads = tuple(g + d for g, d in zip(grads, d_initial, strict=True))
    dw_ref[...], du_ref[...] = dw, du
    d_num_ref[...], d_den_ref[...], d_max_ref[...] = grads


# ---------------------------------------------------------------------------------------------------------
# pallas_call plumbing: padding to whole blocks, block specs and compiler parameters per target.


@dataclasses.dataclass(frozen=True)
class _Options:
    block_sizes: BlockSizes
    target: Target
    interpret: Any

    @property
    def per_row(self) -> bool:
        return self.target == "gpu"


def _padded(x: Array, axis: int, multiple: int, value: float = 0.0) -> Array:
    extra = -x.shape[axis] % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _call(
    kernel, options: _Options, length: int, sequences, rows, out_sequences, out_rows, workspace: int, starts
):
    """Runs ``kernel`` on padded inputs: ``sequences`` [B, T, C], ``rows`` [B, 1, C]; w and u come first;
    ``starts`` [B, T, 1] float 0/1 (shared by the channels) last, or None.

    ``out_sequences`` / ``out_rows``: dtypes of [B, T, C] / [B, 1, C] float outputs; ``workspace``: number of
    [T, block_c] float32 scratch buffers (extra [B, T, C] outputs on GPU, dropped here).
    """
    (w, u), sequences, rows = rows[:2], sequences, rows[2:]
    batch, padded_length, channels = sequences[0].shape
    sizes = options.block_sizes
    grid = (batch, channels // sizes.block_c)
    sequence_spec = pl.BlockSpec((None, padded_length, sizes.block_c), lambda b, c: (b, 0, c))
    row_spec = pl.BlockSpec((None, 1, sizes.block_c), lambda b, c: (b, 0, c))
    channel_spec = pl.BlockSpec((1, sizes.block_c), lambda b, c: (0, c))
    with_starts = () if starts is None else (starts,)
    starts_specs = [pl.BlockSpec((None, padded_length, 1), lambda b, c: (b, 0, 0))] * len(with_starts)
    out_shape = [jax.ShapeDtypeStruct(sequences[0].shape, dtype) for dtype in out_sequences]
    out_shape += [jax.ShapeDtypeStruct(rows[0].shape, dtype) for dtype in out_rows]
    out_specs = [sequence_spec] * len(out_sequences) + [row_spec] * len(out_rows)
    scratch_shapes = ()
    if options.target == "tpu":
        scratch_shapes = [pltpu.VMEM((padded_length, sizes.block_c), jnp.float32)] * workspace
        compiler_params = pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel"),
            vmem_limit_bytes=_tpu_vmem_bytes(
                padded_length, sizes.block_c, sequences, out_sequences, workspace
            ),
        )
    else:
        out_shape += [jax.ShapeDtypeStruct(sequences[0].shape, jnp.float32)] * workspace
        out_specs += [sequence_spec] * workspace
        compiler_params = pltriton.CompilerParams(num_warps=GPU_NUM_WARPS, num_stages=1)
    static = dict(
        length=length, block_t=sizes.block_t, per_row=options.per_row, with_starts=bool(with_starts)
    )
    outputs = pl.pallas_call(
        functools.partial(kernel, **static),
        out_shape=out_shape,
        grid=grid,
        in_specs=[channel_spec] * 2
        + [sequence_spec] * len(sequences)
        + [row_spec] * len(rows)
        + starts_specs,
        out_specs=out_specs,
        scratch_shapes=scratch_shapes,
        compiler_params=compiler_params,
        interpret=options.interpret,
        cost_estimate=_cost_estimate(batch * length * channels, workspace > 0, sequences, out_shape),
        name=kernel.__name__.strip("_"),
    )(w, u, *sequences, *rows, *with_starts)
    return outputs[: len(out_sequences) + len(out_rows)]


def _tpu_vmem_bytes(length: int, block_c: int, sequences, out_sequences, workspace: int) -> int:
    """VMEM for double-buffered [T, block_c] blocks plus scratch, with headroom; at least 32 MiB."""
    column = length * block_c
    blocks = sum(x.dtype.itemsize for x in sequences) + sum(jnp.dtype(d).itemsize for d in out_sequences)
    need = 2 * column * blocks + 4 * column * workspace
    return max(32 * 2**20, int(1.25 * need) + 2**20)


def _cost_estimate(steps: int, backward: bool, sequences, out_shape) -> pl.CostEstimate:
    """Per (token, channel): about 30 flops and 5 exponentials forward, twice that backward."""
    scale = 2 if backward else 1
    moved = sum(x.size * x.dtype.itemsize for x in sequences)
    moved += sum(s.size * jnp.dtype(s.dtype).itemsize for s in out_shape)
    return pl.CostEstimate(flops=30 * scale * steps, transcendentals=5 * scale * steps, bytes_accessed=moved)


def _pad_sequence(x: Array, sizes: BlockSizes) -> Array:
    """[B, T, C] -> [B, T', C'] with T' and C' whole numbers of blocks (padding is never read back)."""
    return _padded(_padded(x, 1, sizes.block_t), 2, sizes.block_c)


def _pad_row(x: Array, sizes: BlockSizes, value: float = 0.0) -> Array:
    """[C] -> [1, C'] or [B, C] -> [B, 1, C'], float32; padded channels get ``value``."""
    x = x.astype(jnp.float32)
    return _padded(x[None] if x.ndim == 1 else x[:, None], -1, sizes.block_c, value)


def _pad_inputs(w_log, u, k, v, state: State, sizes: BlockSizes) -> tuple[list[Array], list[Array]]:
    """(sequences k, v; rows w, u, num, den, max_exp), padded. Padded channels stay finite: w = 0 and an
    empty state."""
    num, den, max_exp = state
    rows = [_pad_row(x, sizes) for x in (w_log, u, num, den)] + [_pad_row(max_exp, sizes, INITIAL_MAX_EXP)]
    return [_pad_sequence(k, sizes), _pad_sequence(v, sizes)], rows


def _pad_starts(starts: Array | None, sizes: BlockSizes) -> Array | None:
    """[B, T] bool -> [B, T', 1] float32 0/1 (padding: no start); None stays None."""
    return None if starts is None else _padded(starts.astype(jnp.float32), 1, sizes.block_t)[..., None]


def _forward(w_log, u, k, v, state: State, starts, options: _Options) -> tuple[Array, State]:
    _, length, channels = k.shape
    sizes = options.block_sizes
    sequences, rows = _pad_inputs(w_log, u, k, v, state, sizes)
    y, num, den, max_exp = _call(
        _forward_kernel,
        options,
        length,
        sequences,
        rows,
        [v.dtype],
        [jnp.float32] * 3,
        workspace=0,
        starts=_pad_starts(starts, sizes),
    )
    return y[:, :length, :channels], tuple(x[:, 0, :channels] for x in (num, den, max_exp))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _wkv4(w_log, u, k, v, state: State, starts, options: _Options) -> tuple[Array, State]:
    return _forward(w_log, u, k, v, state, starts, options)


def _wkv4_forward(w_log, u, k, v, state, starts, options):
    return _forward(w_log, u, k, v, state, starts, options), (w_log, u, k, v, state, starts)


def _wkv4_backward(options: _Options, residuals, cotangents):
    w_log, u, k, v, state, starts = residuals
    gy, (g_num, g_den, g_max) = cotangents
    _, length, channels = k.shape
    sizes = options.block_sizes
    sequences, rows = _pad_inputs(w_log, u, k, v, state, sizes)
    sequences.append(_pad_sequence(gy, sizes))
    rows += [_pad_row(x, sizes) for x in (g_num, g_den, g_max)]
    dk, dv, dw, du, d_num, d_den, d_max = _call(
        _backward_kernel,
        options,
        length,
        sequences,
        rows,
        [k.dtype, v.dtype],
        [jnp.float32] * 5,
        workspace=3,
        starts=_pad_starts(starts, sizes),
    )
    unpad = lambda x: x[:, 0, :channels]  # noqa: E731
    return (
        unpad(dw).sum(0).astype(w_log.dtype),
        unpad(du).sum(0).astype(u.dtype),
        dk[:, :length, :channels],
        dv[:, :length, :channels],
        (unpad(d_num), unpad(d_den), unpad(d_max)),
        None,
    )


_wkv4.defvjp(_wkv4_forward, _wkv4_backward)


def _check_inputs(w_log, u, k, v, state, starts) -> None:
    if k.ndim != 3 or k.shape[1] < 1:
        raise ValueError(f"k must be [B, T, C] with T >= 1; got shape {k.shape}")
    batch, _, channels = k.shape
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {k.shape}; got {v.shape}")
    for name, x in (("w_log", w_log), ("u", u)):
        if x.shape != (channels,):
            raise ValueError(f"{name} must be [C] = ({channels},); got shape {x.shape}")
    for name, x in (("w_log", w_log), ("u", u), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must be a float array; got dtype {x.dtype}")
    if state is not None:
        if len(state) != 3:
            raise ValueError(f"state must be (num, den, max_exp); got {len(state)} arrays")
        for name, x in zip(("num", "den", "max_exp"), state, strict=True):
            if x.shape != (batch, channels):
                raise ValueError(f"state {name} must be [B, C] = ({batch}, {channels}); got {x.shape}")
    check_starts(starts, k.shape[:2])


@functools.partial(jax.jit, static_argnames=("block_sizes", "target", "interpret"))
def wkv4(
    w_log: Array,
    u: Array,
    k: Array,
    v: Array,
    state: State | None = None,
    *,
    starts: Array | None = None,
    block_sizes: BlockSizes | None = None,
    target: Target | None = None,
    interpret: Any = False,
) -> tuple[Array, State]:
    """WKV-4 forward with a kernel backward (``jax.custom_vjp``).

    Args:
      w_log: ``[C]`` log decay (``-exp(time_decay)``, ``<= 0``), float32.
      u: ``[C]`` bonus for the current token (``time_first``).
      k, v: ``[B, T, C]``, float32 or bfloat16 (state and arithmetic are float32).
      state: ``(num, den, max_exp)``, ``[B, C]`` float32 each, or None for the empty state.
      starts: ``[B, T]`` bool, or None: the state returns to ``state`` before a token that starts a
        document (packed samples); differentiable in ``state`` through every such read.
      block_sizes: see :class:`BlockSizes`; default per target.
      target: ``'tpu'`` or ``'gpu'`` (the kernel layout); default from the JAX backend, ``'tpu'`` on CPU.
      interpret: False to compile; True or ``pltpu.InterpretParams(...)`` to run on CPU.

    Returns:
      ``y [B, T, C]`` in ``v.dtype`` and the final state ``(num, den, max_exp)``.
    """
    _check_inputs(w_log, u, k, v, state, starts)
    batch, _, channels = k.shape
    if target is None:
        target = "gpu" if jax.default_backend() == "gpu" else "tpu"
    block_sizes = block_sizes or BlockSizes.default(target, channels)
    block_sizes.check_for(target)
    if state is None:
        zero = jnp.zeros((batch, channels), jnp.float32)
        state = (zero, zero, jnp.full((batch, channels), INITIAL_MAX_EXP, jnp.float32))
    state = tuple(x.astype(jnp.float32) for x in state)
    return _wkv4(w_log, u, k, v, state, starts, _Options(block_sizes, target, interpret))


# ---------------------------------------------------------------------------------------------------------
# Plain jnp reference: the official stable recurrence, float32, one lax.scan step per token.


def wkv4_float32_reference(
    w_log: Array, u: Array, k: Array, v: Array, state: State | None = None
) -> tuple[Array, State]:
    """What the kernel computes, written as the official RWKV-4 recurrence (no Kahan exponent)."""
    batch, _, channels = k.shape
    if state is None:
        zero = jnp.zeros((batch, channels), jnp.float32)
        state = (zero, zero, jnp.full((batch, channels), INITIAL_MAX_EXP, jnp.float32))
    w_log, u = w_log.astype(jnp.float32), u.astype(jnp.float32)

    def step(carry, kv):
        num, den, max_exp = carry
        k_t, v_t = kv
        y = _output(u, k_t, v_t, num, den, max_exp, 0.0)[0]
        new_max = jnp.maximum(max_exp + w_log, k_t)
        e_state, e_token = jnp.exp(max_exp + w_log - new_max), jnp.exp(k_t - new_max)
        return (e_state * num + e_token * v_t, e_state * den + e_token, new_max), y

    xs = (jnp.swapaxes(k, 0, 1).astype(jnp.float32), jnp.swapaxes(v, 0, 1).astype(jnp.float32))
    final, ys = jax.lax.scan(step, tuple(x.astype(jnp.float32) for x in state), xs)
    return jnp.swapaxes(ys, 0, 1).astype(v.dtype), final
