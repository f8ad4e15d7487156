"""WKV-5/6 chunk-wise parallel form: the training form (matmuls within chunks, the state carried between).

Within a chunk of L tokens (positions t, s), with S0 the state at the chunk start::

    y_t = r_t . (exp(W[0, t)) * S0)                               inter-chunk: through the carried state
        + sum_{s<t} (r_t . (exp(W(s, t)) * k_s)) v_s              intra-chunk: a masked "attention" matmul
        + (r_t . (u * k_t)) v_t                                   the current token's bonus
    S_L = exp(W[0, L)) * S0 + sum_s (exp(W(s, L)) * k_s) v_s^T

where ``W(a, b)`` is the sum of the log decays ``w_m`` for ``a < m < b`` (``[`` includes the end), per key
channel. The products ``r . (exp(W) * k)`` are per channel, so a matmul needs them factorised as
``(r * exp(W1)) . (k * exp(W2))``.

Keeping every exponent bounded. ``w`` can be as low as ``-exp(5) ~ -148`` per step, so ``W`` over a chunk
can reach ``-148 * L``: any factorisation ``exp(a) * exp(-b)`` against a fixed reference point overflows.
Here every exponent is a sum of log decays over a range of steps, hence ``<= 0``, and each range is
summed directly from its own start (an exclusive cumsum within a block, never a difference of two long
cumsums, which would lose ``eps * |cumsum|`` of absolute accuracy when a strong decay precedes weak ones):

- inter-chunk: ``exp(W[0, t))`` and ``exp(W(s, L))``: both ``<= 1``.
- the chunk is split in sub-chunks of ``SUB_CHUNK`` tokens. For t in sub-chunk b and s in an earlier
  sub-chunk, ``W(s, t) = W(s, p] + W(p, t)`` with ``p = b * SUB_CHUNK - 1`` the last step before sub-chunk
  b: the row factor ``exp(W(p, t))`` and the column factor ``exp(W(s, p])`` are both ``<= 1``. Their
  product can underflow only where the exact value is below the smallest float anyway.
- diagonal sub-chunk blocks (s, t in the same sub-chunk): the exact pairwise ``exp(W(s, t))`` per channel,
  ``SUB_CHUNK**2 * N`` per block. Pairs with ``s >= t`` are masked by ``jnp.where`` on the exponent
  (``-inf``, so ``exp`` gives 0 and the gradient through the masked branch is 0, never ``inf * 0``).

T need not be a multiple of L: the tail is padded with ``w = 0`` (decay 1) and ``k = 0``, which leave the
state unchanged, and the padded outputs are sliced off.
"""

import functools

import jax
import jax.numpy as jnp

from rwkv_jax.array_typing import Array

DEFAULT_CHUNK_SIZE = 64
# Tokens per diagonal block computed with exact pairwise decays (cost SUB_CHUNK * N per token).
SUB_CHUNK = 16


def _exclusive_cumsum(x: Array, axis: int, *, reverse: bool = False) -> Array:
    """``out[t] = sum_{m<t} x[m]`` (``m > t`` when reverse) along ``axis``, summed from the block edge."""
    axis = axis % x.ndim
    total = jax.lax.cumsum(x, axis=axis, reverse=reverse)
    zero = jnp.zeros_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis))
    size = x.shape[axis]
    if reverse:
        return jnp.concatenate([jax.lax.slice_in_dim(total, 1, size, axis=axis), zero], axis=axis)
    return jnp.concatenate([zero, jax.lax.slice_in_dim(total, 0, size - 1, axis=axis)], axis=axis)


def _diagonal_blocks(r: Array, k: Array, v: Array, w: Array, u: Array) -> Array:
    """Outputs of the tokens of each sub-chunk from the same sub-chunk (bonus included).

    r, k, v, w: ``[..., n, S, N]`` (n sub-chunks of S tokens); u: broadcastable to ``[..., 1, 1, N]``.
    Returns ``[..., n, S, N]``.
    """
    size = w.shape[-2]
    idx = jnp.arange(size)
    # after_s[s, m] selects w_m for m > s; the exclusive cumsum over m then gives W(s, t) at m = t.
    after_s = (idx[None, :] > idx[:, None])[:, :, None]  # [S(s), S(m), 1]
    seg = _exclusive_cumsum(jnp.where(after_s, w[..., None, :, :], 0.0), axis=-2)  # [..., s, t, N]
    seg = jnp.swapaxes(seg, -3, -2)  # [..., t, s, N]
    causal = (idx[:, None] > idx[None, :])[:, :, None]  # s < t
    decay = jnp.exp(jnp.where(causal, seg, -jnp.inf))
    scores = jnp.einsum("...tn,...sn,...tsn->...ts", r, k, decay)
    bonus = jnp.sum(r * u * k, axis=-1, keepdims=True)
    return jnp.einsum("...ts,...sm->...tm", scores, v) + bonus * v


def _earlier_sub_chunks(r: Array, k: Array, v: Array, w: Array) -> Array:
    """Outputs of the tokens of each sub-chunk from the earlier sub-chunks of the same chunk.

    r, k, v, w: ``[..., n, S, N]``. Returns ``[..., n, S, N]``. Row block b, column block a < b, split at
    p = the last step of sub-chunk b - 1: ``W(s, t) = W(s, end of a] + W(a, b) + W(p, t)``, all ``<= 0``.
    """
    n = w.shape[-3]
    rows = r * jnp.exp(_exclusive_cumsum(w, axis=-2))  # r_t exp(W(p, t))
    to_sub_end = _exclusive_cumsum(w, axis=-2, reverse=True)  # W(s, end of its sub-chunk]
    block = jnp.arange(n)
    # between[b, a] = sum of the sub-chunk totals a < a' < b.
    b, a, c = block[:, None, None], block[None, :, None], block[None, None, :]
    strictly_between = (a < c) & (c < b)
    between = jnp.einsum("...cn,bac->...ban", jnp.sum(w, axis=-2), strictly_between.astype(w.dtype))
    earlier = (block[None, :] < block[:, None])[:, :, None, None]  # [b, a, 1, 1]
    col_exp = jnp.where(earlier, to_sub_end[..., None, :, :, :] + between[..., None, :], -jnp.inf)
    cols = k[..., None, :, :, :] * jnp.exp(col_exp)  # [..., b, a, S, N]
    scores = jnp.einsum("...btn,...basn->...btas", rows, cols)
    return jnp.einsum("...btas,...asm->...btm", scores, v)


def _intra_chunk(r: Array, k: Array, v: Array, w: Array, u: Array, sub_chunk: int) -> Array:
    """Outputs from the tokens of the same chunk. r, k, v, w: ``[..., L, N]``; returns ``[..., L, N]``."""
    *lead, length, size = w.shape
    split = tuple(x.reshape(*lead, length // sub_chunk, sub_chunk, size) for x in (r, k, v, w))
    y = _diagonal_blocks(*split, u)
    if length > sub_chunk:
        y = y + _earlier_sub_chunks(*split)
    return y.reshape(*lead, length, size)


def _to_chunks(x: Array, chunk_size: int) -> Array:
    """``[B, T, H, N]`` (T a multiple of chunk_size) -> ``[B, H, T / L, L, N]`` float32."""
    batch, length, heads, size = x.shape
    x = x.astype(jnp.float32).reshape(batch, length // chunk_size, chunk_size, heads, size)
    return x.transpose(0, 3, 1, 2, 4)


def _validate_chunk_size(chunk_size: int) -> int:
    """The sub-chunk size for ``chunk_size``; raises if chunk_size is not usable."""
    sub_chunk = min(chunk_size, SUB_CHUNK)
    if not isinstance(chunk_size, int) or chunk_size < 1 or chunk_size % sub_chunk:
        expected = f"a positive int, a multiple of {SUB_CHUNK} if larger than {SUB_CHUNK}"
        raise ValueError(f"chunk_size must be {expected}; got {chunk_size!r}")
    return sub_chunk


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
    """Chunk-wise parallel WKV-5/6, float32 accumulation.

    Args:
      r, k, v: ``[B, T, H, N]`` receptance, key, value (any float dtype).
      w_log: ``[B, T, H, N]`` log of the per-step decay, ``<= 0`` (down to about -150 is exact).
      u: ``[H, N]`` bonus of the current token.
      state: ``[B, H, N, N]`` initial state ``[key, value]``, or None for zeros.
      chunk_size: tokens per chunk (the scan over chunks carries the state); a multiple of
        ``SUB_CHUNK`` when larger than it.

    Returns:
      ``y [B, T, H, N]`` in ``v.dtype`` and the final float32 state ``[B, H, N, N]``.
    """
    sub_chunk = _validate_chunk_size(chunk_size)
    batch, length, heads, size = r.shape
    if state is None:
        state = jnp.zeros((batch, heads, size, size), jnp.float32)
    pad = [(0, 0), (0, -length % chunk_size), (0, 0), (0, 0)]
    r_c, k_c, v_c, w_c = (_to_chunks(jnp.pad(x, pad), chunk_size) for x in (r, k, v, w_log))
    u = u.astype(jnp.float32)[:, None, None, :]  # [H, 1, 1, N] against [..., H, chunks, L, N]

    y = _intra_chunk(r_c, k_c, v_c, w_c, u[..., None, :], sub_chunk)
    # Per chunk: what it adds to the state, and its total decay (exponents <= 0, see the module docstring).
    to_chunk_end = k_c * jnp.exp(_exclusive_cumsum(w_c, axis=-2, reverse=True))
    chunk_kv = jnp.einsum("bhcsi,bhcsj->cbhij", to_chunk_end, v_c)
    chunk_decay = jnp.exp(jnp.sum(w_c, axis=-2)).transpose(2, 0, 1, 3)  # [chunks, B, H, N]

    def carry_state(s: Array, chunk: tuple[Array, Array]) -> tuple[Array, Array]:
        decay, kv = chunk
        return decay[..., None] * s + kv, s

    final, starts = jax.lax.scan(carry_state, state.astype(jnp.float32), (chunk_decay, chunk_kv))
    from_start = r_c * jnp.exp(_exclusive_cumsum(w_c, axis=-2))
    y = y + jnp.einsum("bhcti,cbhij->bhctj", from_start, starts)
    y = y.transpose(0, 2, 3, 1, 4).reshape(batch, -1, heads, size)[:, :length]
    return y.astype(v.dtype), final
