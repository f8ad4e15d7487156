"""WKV-5/6 chunk-wise parallel form: the training form (matmuls within chunks, the state carried between).

Within a chunk of L tokens (positions t, s), with S0 the state at the chunk start::

    y_t = r_t . (exp(W[0, t)) * S0)                               inter-chunk: through the carried state
        + sum_{s<t} (r_t . (exp(W(s, t)) * k_s)) v_s              intra-chunk: matmuls (see below)
        + (r_t . (u * k_t)) v_t                                   the current token's bonus
    S_L = exp(W[0, L)) * S0 + sum_s (exp(W(s, L)) * k_s) v_s^T

where ``W(a, b)`` is the sum of the log decays ``w_m`` for ``a < m < b`` (``[`` includes the end), per key
channel. The products ``r . (exp(W) * k)`` are per channel, so a matmul needs them factorised as
``(r * exp(W1)) . (k * exp(W2))``.

Keeping every exponent bounded. ``w`` can be as low as ``-exp(5) ~ -148`` per step, so ``W`` over a chunk
can reach ``-148 * L``: any factorisation ``exp(a) * exp(-b)`` against one reference point per chunk
overflows. Here every factor is a product of a few ``exp`` of sums of log decays over ranges of steps,
hence ``<= 1``, and each range is summed from its own steps only (a tree of block totals, never a
difference of two long cumsums, which would lose ``eps * |cumsum|`` of absolute accuracy when a strong
decay precedes weak ones; see :func:`_block_decays`):

- inter-chunk: ``exp(W[0, t))`` and ``exp(W(s, L))``: both ``<= 1``.
- intra-chunk, by halving (``L`` a power of 2): cut the chunk in segments of 2m tokens, m = L/2, ..., 1.
  For s in the left half and t in the right half of a segment, with p the last step of the left half,
  ``W(s, t) = W(s, p] + W(p, t)``: a column factor ``exp(W(s, p])`` and a row factor ``exp(W(p, t))``,
  both ``<= 1``, so the pairs of a segment are one matmul. Every pair s < t crosses exactly one such
  midpoint, so the levels together cover the causal part exactly, with no mask and no pairwise
  ``[L, L, N]`` tensor; the product of the two factors underflows only where the exact value is below the
  smallest float anyway. Cost per token: ``log2(L)`` levels of ``O(N)`` elementwise work plus matmuls.

Execution. A loop over chunks runs forward and, in a hand-written backward (``jax.custom_vjp``), in
reverse, carrying the state and its gradient. One chunk of all batch rows and heads (``[B, H, L, N]``) is
small enough to stay in the CPU's caches through the dozens of elementwise steps of the levels; done over
the whole sequence at once, each step would stream the full tensors through memory, and autodiff would
store every level's intermediates. The backward keeps only the chunk-start states and recomputes the
factors per chunk.

Gradient of the log decays. A step ``w_j`` scales every pair ``s < j < t`` that it lies between. With
``X(s, t)`` the pair's term of ``d loss`` per channel, ``r_t * dr_t = sum_{s<t} X(s, t)`` and
``k_s * dk_s = sum_{t>s} X(s, t)`` (each over the pairs that make up the gradient), so
``dw_j = sum_{t>j} r_t dr_t - sum_{s>=j} k_s dk_s``: cumulative sums within the chunk of quantities that
the backward has anyway (the state terms add one-sided sums of the same kind, see :func:`_decay_grad`).

T need not be a multiple of L: the tail is padded with ``w = 0`` (decay 1) and ``k = 0``, which leave the
state unchanged, and the padded outputs are sliced off.
"""

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.array_typing import Array

DEFAULT_CHUNK_SIZE = 64


def _block_decays(w: Array) -> list[tuple[Array, Array]]:
    """Decay factors within aligned blocks of m = 1, 2, ..., L steps of ``w [..., L, N]``.

    Returns ``[(into_m, out_of_m)]`` (each ``[..., L, N]``, all ``<= 1``), index log2(m): ``into_m[t]`` is
    ``exp`` of the sum of the steps of t's block before t, ``out_of_m[s]`` of those after s. Built as a tree:
    doubling the block multiplies the right half's factors by the left half's total decay and vice versa,
    each total the ``exp`` of a sum of its own steps (all ``<= 0``: no cancellation, unlike a difference of
    two cumulative sums). So every factor is a product of at most log2(L) such exponentials, each rounded
    once (within a few roundings of the ``exp`` of the whole sum), and a chunk takes ``2 L`` exponentials
    instead of one per factor and level. One ``exp`` per step and products alone would take ``L``, but a
    product of up to L - 1 rounded steps carries their rounding bias (docs/wkv_training_speed.md).
    """
    *lead, length, size = w.shape
    into = out_of = jnp.ones_like(w)
    totals = w  # per block of m steps: [..., L / m, N]
    factors, m = [(into, out_of)], 1
    while m < length:
        halves = totals.reshape(*lead, length // (2 * m), 2, 1, size)
        decays, one = jnp.exp(halves), jnp.ones_like(halves[..., :1, :, :])
        from_left = jnp.concatenate([one, decays[..., :1, :, :]], axis=-3)
        from_right = jnp.concatenate([decays[..., 1:, :, :], one], axis=-3)
        blocks = (*lead, length // (2 * m), 2, m, size)
        into = (into.reshape(blocks) * from_left).reshape(w.shape)
        out_of = (out_of.reshape(blocks) * from_right).reshape(w.shape)
        totals = jnp.sum(halves, axis=(-3, -2))
        factors.append((into, out_of))
        m *= 2
    return factors


def _half(x: Array, half: int, side: int) -> Array:
    """The left (side 0) or right (side 1) halves of the segments of 2 * half tokens of ``x [..., L, N]``:
    ``[..., L / (2 half), half, N]``."""
    *lead, length, size = x.shape
    return x.reshape(*lead, length // (2 * half), 2, half, size)[..., side, :, :]


def _on_half(update: Array, side: int) -> Array:
    """``update`` (shaped as :func:`_half`'s result) placed on the halves on ``side`` of a zero chunk
    ``[..., L, N]``. The levels' contributions are summed once, after the last level: XLA then fuses the
    sum with these zero-padded placements into one op, where an in-place update per level was one op each
    (docs/wkv_training_speed.md, eighth pass)."""
    *lead, segments, half, size = update.shape
    zero = jnp.zeros_like(update)
    sides = (update, zero) if side == 0 else (zero, update)
    return jnp.stack(sides, axis=-3).reshape(*lead, segments * 2 * half, size)


def _levels(
    r: Array, k: Array, factors: list[tuple[Array, Array]]
) -> Iterator[tuple[int, Array, Array, Array, Array]]:
    """The halving levels of a chunk, largest first: ``(half, rows, cols, row_decay, col_decay)``.

    For segments of ``2 * half`` tokens split at their last left step p: ``row_decay = exp(W(p, t))`` for
    the right halves' tokens t and ``col_decay = exp(W(s, p])`` for the left halves' tokens s (both
    ``<= 1``, from :func:`_block_decays`), ``rows = r * row_decay``, ``cols = k * col_decay``; each
    ``[..., L / (2 half), half, N]``.
    """
    half, level = r.shape[-2] // 2, len(factors) - 2
    while half:
        into, out_of = factors[level]
        row_decay, col_decay = _half(into, half, 1), _half(out_of, half, 0)
        yield half, _half(r, half, 1) * row_decay, _half(k, half, 0) * col_decay, row_decay, col_decay
        half, level = half // 2, level - 1


def _chunk_forward(r: Array, k: Array, v: Array, w: Array, u: Array, state: Array) -> tuple[Array, Array]:
    """One chunk: r, k, v, w ``[B, H, L, N]``, u ``[H, 1, N]``, state ``[B, H, N, N]`` (all float32) ->
    ``y [B, H, L, N]`` and the state after the chunk."""
    factors = _block_decays(w)
    intra = []
    for half, rows, cols, _, _ in _levels(r, k, factors):
        scores = jnp.einsum("...tn,...sn->...ts", rows, cols)
        intra.append(_on_half(jnp.einsum("...ts,...sj->...tj", scores, _half(v, half, 0)), 1))
    from_start, to_end = factors[-1]
    y = row_sums(r * u * k) * v + sum(intra) + jnp.einsum("...ti,...ij->...tj", r * from_start, state)
    added = matmul_tn(k * to_end, v)
    return y, _total_decay(w) * state + added


def matmul_tn(x: Array, y: Array) -> Array:
    """``x^T y``: ``[..., K, M] x [..., K, N] -> [..., M, N]``, as a transpose of ``x`` (a copy) and a plain
    matmul. XLA:CPU (jax 0.10.2) runs a matmul that contracts the lhs's second-to-last axis through Eigen,
    slower than its plain (YNNPACK) matmul even with the copy: ``[8, 32, 64]^T [8, 32, 64]`` 90 us, against
    33 + 50; forward + backward of WKV-6 7% and WKV-7 3% faster (docs/wkv_training_speed.md, fourth pass).
    """
    return jnp.swapaxes(x, -1, -2) @ y


def batched(matrix: np.ndarray, like: Array) -> Array:
    """``matrix [M, L]`` broadcast over the leading axes of ``like [..., L, N]``: a batched matmul with it
    needs no transpose of ``like`` (XLA:CPU would transpose ``[..., L, N]`` to ``[L, ... N]`` for an
    unbatched one)."""
    return jnp.broadcast_to(jnp.asarray(matrix, like.dtype), (*like.shape[:-2], *matrix.shape))


def row_sums(x: Array) -> Array:
    """``x [..., N]`` summed over its last axis, ``[..., 1]``. A mat-vec: XLA:CPU (jax 0.10.2) reduces the
    minor axis of these small tensors about six times slower."""
    return x @ jnp.ones((x.shape[-1], 1), x.dtype)


def _total_decay(w: Array) -> Array:
    """The decay over the whole chunk per key channel, ``exp`` of the column sums of ``w [..., L, N]``, as a
    column ``[..., N, 1]`` that scales the state's key rows."""
    return jnp.swapaxes(jnp.exp(_column_sums(w)), -1, -2)


def _column_sums(x: Array) -> Array:
    """``x [..., L, N]`` summed over L, ``[..., 1, N]`` (a batched mat-vec, as :func:`row_sums`)."""
    return batched(np.ones((1, x.shape[-2]), np.float32), x) @ x


def _decay_grad(r_dr: Array, k_dk: Array, from_end: Array) -> Array:
    """Gradient of the chunk's log decays ``[..., L, N]`` from the pairs they lie between (module docstring).

    ``r_dr``: ``r * dr`` from the intra-chunk pairs and the start state (every pair ending at t); ``k_dk``:
    ``k * dk`` from the intra-chunk pairs and the end state (every pair starting at s); ``from_end``
    ``[..., 1, N]``: ``sum_value(dS_L * S_L)``, the gradient of the end state's terms by a step that
    scales them all. Step j lies inside an intra pair (s, t) iff s < j < t, after the start-state path of
    t iff j < t (the start state's part of ``S_L`` lies after every step), and before the end-state path of
    s iff s < j, that is every step but those ``>= s``::

        dw_j = sum_{t>j} r_dr_t - sum_{s>=j} k_dk_s + from_end

    one matmul with a strictly triangular 0/1 matrix.
    """
    after = np.triu(np.ones((r_dr.shape[-2],) * 2, np.float32), 1)  # [j, t]: t > j
    return batched(after, r_dr) @ (r_dr - k_dk) - k_dk + from_end


def _chunk_backward(
    r: Array, k: Array, v: Array, w: Array, u: Array, state: Array, end: Array, dy: Array, d_next: Array
) -> tuple[Array, ...]:
    """Gradients of one chunk (shapes as :func:`_chunk_forward`) given ``dy``, the states at its start and
    end and the gradient of the end state: ``(dr, dk, dv, dw, du [H, 1, N] summed over B and L,
    d_state)``."""
    factors = _block_decays(w)
    from_start, to_end = factors[-1]
    total = _total_decay(w)
    # Through the states: y += (r * from_start) @ state; next = total * state + (k * to_end)^T @ v.
    d_state = total * d_next + matmul_tn(r * from_start, dy)
    dr = jnp.einsum("...tj,...ij->...ti", dy, state) * from_start
    dk_end = jnp.einsum("...sj,...ij->...si", v, d_next) * to_end
    dv = jnp.einsum("...si,...ij->...sj", k * to_end, d_next)
    intra_dv, intra_dr, intra_dk = [], [], []
    for half, rows, cols, row_decay, col_decay in _levels(r, k, factors):
        dy_right, v_left = _half(dy, half, 1), _half(v, half, 0)
        scores = jnp.einsum("...tn,...sn->...ts", rows, cols)
        d_scores = jnp.einsum("...tj,...sj->...ts", dy_right, v_left)
        intra_dv.append(_on_half(matmul_tn(scores, dy_right), 0))
        intra_dr.append(_on_half(jnp.einsum("...ts,...sn->...tn", d_scores, cols) * row_decay, 1))
        intra_dk.append(_on_half(matmul_tn(d_scores, rows) * col_decay, 0))
    dv, dr, dk = dv + sum(intra_dv), dr + sum(intra_dr), dk_end + sum(intra_dk)
    dw = _decay_grad(r * dr, k * dk, jnp.swapaxes(row_sums(d_next * end), -1, -2))
    # The bonus term (r . (u * k)) v, which no decay touches.
    bonus, d_bonus = row_sums(r * u * k), row_sums(dy * v)
    dr = dr + d_bonus * u * k
    dk = dk + d_bonus * u * r
    du = jnp.sum(_column_sums(d_bonus * r * k), axis=0)
    return dr, dk, dv + bonus * dy, dw, du, d_state


def get_chunk(x: Array, index: Array, chunk_size: int) -> Array:
    """Chunk ``index`` of ``x [B, T, H, N]`` as ``[B, H, L, N]`` (sliced and transposed per chunk: one
    chunk's transpose stays in the caches, a transpose of the whole sequence streams it through memory)."""
    return jax.lax.dynamic_slice_in_dim(x, index * chunk_size, chunk_size, axis=1).transpose(0, 2, 1, 3)


def put_chunk(x: Array, index: Array, chunk_size: int, value: Array) -> Array:
    """``x [B, T, H, N]`` with chunk ``index`` replaced by ``value [B, H, L, N]``."""
    return jax.lax.dynamic_update_slice_in_dim(x, value.transpose(0, 2, 1, 3), index * chunk_size, axis=1)


def put_state(states: Array, index: Array, state: Array) -> Array:
    """``states [T / L, ...]`` with row ``index`` set to ``state``: a dynamic update in place (``.at[].set``
    with a traced index is a scatter, which XLA:CPU lowers with a bounds check and a select)."""
    return jax.lax.dynamic_update_index_in_dim(states, state, index, 0)


def _forward_pass(
    r: Array, k: Array, v: Array, w: Array, u: Array, state: Array, chunk_size: int
) -> tuple[Array, Array, Array]:
    """y ``[B, T, H, N]``, the final state and the states at every chunk start ``[T / L, B, H, N, N]``."""

    def chunk_step(index: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        y, starts, s = carry
        inputs = (get_chunk(x, index, chunk_size) for x in (r, k, v, w))
        y_chunk, s_next = _chunk_forward(*inputs, u, s)
        return put_chunk(y, index, chunk_size, y_chunk), put_state(starts, index, s), s_next

    starts = jnp.zeros((r.shape[1] // chunk_size, *state.shape), state.dtype)
    y, starts, final = jax.lax.fori_loop(0, starts.shape[0], chunk_step, (jnp.zeros_like(v), starts, state))
    return y, final, starts


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _wkv_chunks(
    r: Array, k: Array, v: Array, w: Array, u: Array, state: Array, chunk_size: int
) -> tuple[Array, Array]:
    """The chunk loop: r, k, v, w ``[B, T, H, N]`` (T a multiple of chunk_size), u ``[H, 1, N]``, state
    ``[B, H, N, N]``, all float32 -> (y, final state). Differentiated by :func:`_wkv_chunks_backward`."""
    y, final, _ = _forward_pass(r, k, v, w, u, state, chunk_size)
    return y, final


def _wkv_chunks_forward(
    r: Array, k: Array, v: Array, w: Array, u: Array, state: Array, chunk_size: int
) -> tuple[tuple[Array, Array], tuple[Array, ...]]:
    y, final, starts = _forward_pass(r, k, v, w, u, state, chunk_size)
    return (y, final), (r, k, v, w, u, starts, final)


def _wkv_chunks_backward(
    chunk_size: int, saved: tuple[Array, ...], cotangents: tuple[Array, Array]
) -> tuple[Array, ...]:
    """The chunks in reverse, carrying the gradient of the state and the chunk's end state (the start state
    of the chunk after it, the final state for the last): recomputes each chunk's decay factors from the
    saved inputs and the chunk's start state (nothing per level is stored by the forward)."""
    r, k, v, w, u, starts, final = saved
    dy, d_final = cotangents
    last = starts.shape[0] - 1

    def chunk_step(step: Array, carry: tuple[Array, ...]) -> tuple[Array, ...]:
        index = last - step
        du, end, d_state = carry[4:]
        chunk = (get_chunk(x, index, chunk_size) for x in (r, k, v, w))
        start, dy_c = starts[index], get_chunk(dy, index, chunk_size)
        *chunk_grads, chunk_du, d_state = _chunk_backward(*chunk, u, start, end, dy_c, d_state)
        grads = (put_chunk(g, index, chunk_size, c) for g, c in zip(carry[:4], chunk_grads, strict=True))
        return (*grads, du + chunk_du, start, d_state)

    initial = (*(jnp.zeros_like(x) for x in (r, k, v, w)), jnp.zeros_like(u), final, d_final)
    *grads, du, _, d_state = jax.lax.fori_loop(0, starts.shape[0], chunk_step, initial)
    return (*grads, du, d_state)


_wkv_chunks.defvjp(_wkv_chunks_forward, _wkv_chunks_backward)


def _validate_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of 2 (1, 2, 4, ...); got {chunk_size!r}")


@functools.partial(jax.jit, static_argnames="chunk_size")
def wkv6_chunked(
    r: Array,
    k: Array,
    v: Array,
    w_log: Array,
    u: Array,
    state: Array | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Array, Array]:
    """Chunk-wise parallel WKV-5/6, float32 accumulation, with a hand-written backward.

    Args:
      r, k, v: ``[B, T, H, N]`` receptance, key, value (any float dtype).
      w_log: ``[B, T, H, N]`` log of the per-step decay, ``<= 0`` (``-inf``, a decay of exactly 0, allowed).
      u: ``[H, N]`` bonus of the current token.
      state: ``[B, H, N, N]`` initial state ``[key, value]``, or None for zeros.
      chunk_size: tokens per chunk (the loop over chunks carries the state); a power of 2.

    Returns:
      ``y [B, T, H, N]`` in ``v.dtype`` and the final float32 state ``[B, H, N, N]``.

    Reverse-mode only (``jax.grad``, ``jax.vjp``): the backward is hand-written, so forward-mode
    (``jax.jvp``) is not defined; use :func:`~rwkv_jax.wkv.v6.wkv6_scan` for that.
    """
    _validate_chunk_size(chunk_size)
    batch, length, heads, size = r.shape
    if state is None:
        state = jnp.zeros((batch, heads, size, size), jnp.float32)
    pad = [(0, 0), (0, -length % chunk_size), (0, 0), (0, 0)]
    r_p, k_p, v_p, w_p = (jnp.pad(x.astype(jnp.float32), pad) for x in (r, k, v, w_log))
    u = u.astype(jnp.float32)[:, None, :]  # [H, 1, N] against a chunk's [B, H, L, N]
    y, final = _wkv_chunks(r_p, k_p, v_p, w_p, u, state.astype(jnp.float32), chunk_size)
    return y[:, :length].astype(v.dtype), final
