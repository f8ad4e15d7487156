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
overflows. Here every factor is ``exp`` of a sum of log decays over a range of steps, hence ``<= 1``, and
each range is summed from its own steps only (a tree of block sums, never a difference of two long
cumsums, which would lose ``eps * |cumsum|`` of absolute accuracy when a strong decay precedes weak ones):

- inter-chunk: ``exp(W[0, t))`` and ``exp(W(s, L))``: both ``<= 1``.
- intra-chunk, by halving (``L`` a power of 2): cut the chunk in segments of 2m tokens, m = L/2, ..., 1.
  For s in the left half and t in the right half of a segment, with p the last step of the left half,
  ``W(s, t) = W(s, p] + W(p, t)``: a column factor ``exp(W(s, p])`` and a row factor ``exp(W(p, t))``,
  both ``<= 1``, so the pairs of a segment are one matmul. Every pair s < t crosses exactly one such
  midpoint, so the levels together cover the causal part exactly, with no mask and no pairwise
  ``[L, L, N]`` tensor; the product of the two factors underflows only where the exact value is below the
  smallest float anyway. Cost per token: ``log2(L)`` levels of ``O(N)`` elementwise work plus matmuls.

T need not be a multiple of L: the tail is padded with ``w = 0`` (decay 1) and ``k = 0``, which leave the
state unchanged, and the padded outputs are sliced off.
"""

import functools

import jax
import jax.numpy as jnp

from rwkv_jax.array_typing import Array

DEFAULT_CHUNK_SIZE = 64


def _block_sums(w: Array) -> list[tuple[Array, Array]]:
    """Exclusive prefix and suffix sums of ``w [..., L, N]`` within aligned blocks of m = 1, 2, ..., L steps.

    Returns ``[(prefix_m, suffix_m)]`` (each ``[..., L, N]``), index log2(m): ``prefix_m[t]`` sums the steps
    of t's block before t, ``suffix_m[s]`` those after s. Built as a tree: doubling the block adds the total
    of the left half to the prefixes of the right half and vice versa. Every value is a sum of steps of its
    own range only (all ``<= 0``): no cancellation, unlike a difference of two cumulative sums.
    """
    *lead, length, size = w.shape
    prefix = suffix = jnp.zeros_like(w)
    totals = w  # per block of m steps: [..., L / m, N]
    sums, m = [(prefix, suffix)], 1
    while m < length:
        halves = totals.reshape(*lead, length // (2 * m), 2, 1, size)
        zero = jnp.zeros_like(halves[..., :1, :, :])
        from_left = jnp.concatenate([zero, halves[..., :1, :, :]], axis=-3)
        from_right = jnp.concatenate([halves[..., 1:, :, :], zero], axis=-3)
        blocks = (*lead, length // (2 * m), 2, m, size)
        prefix = (prefix.reshape(blocks) + from_left).reshape(w.shape)
        suffix = (suffix.reshape(blocks) + from_right).reshape(w.shape)
        totals = jnp.sum(halves, axis=(-3, -2))
        sums.append((prefix, suffix))
        m *= 2
    return sums


def _intra_chunk(r: Array, k: Array, v: Array, u: Array, sums: list[tuple[Array, Array]]) -> Array:
    """Outputs from the tokens of the same chunk, by halving: r, k, v ``[..., L, N]`` -> ``[..., L, N]``.

    At each level the chunk is cut in segments of 2m tokens; the pairs (s in the left half, t in the right
    half) of every segment form one matmul with the split at the last left step p:
    ``exp(W(s, t)) = exp(W(s, p]) * exp(W(p, t))``, both factors ``<= 1`` (the suffix of s and the prefix
    of t within their m-blocks, from :func:`_block_sums`). Levels m = L/2, ..., 1 cover every pair s < t
    exactly once; the pair t == s is the bonus.
    """
    *lead, length, size = r.shape
    y = jnp.sum(r * u * k, axis=-1, keepdims=True) * v
    half, level = length // 2, len(sums) - 2
    while half:
        prefix, suffix = sums[level]
        segments = (*lead, length // (2 * half), 2, half, size)
        # Only the right halves' rows and the left halves' columns are used: slice before exp.
        rows = r.reshape(segments)[..., 1, :, :] * jnp.exp(prefix.reshape(segments)[..., 1, :, :])
        cols = k.reshape(segments)[..., 0, :, :] * jnp.exp(suffix.reshape(segments)[..., 0, :, :])
        scores = jnp.einsum("...tn,...sn->...ts", rows, cols)
        from_left = jnp.einsum("...ts,...sj->...tj", scores, v.reshape(segments)[..., 0, :, :])
        y = y.reshape(segments).at[..., 1, :, :].add(from_left).reshape(y.shape)
        half, level = half // 2, level - 1
    return y


def _to_chunks(x: Array, chunk_size: int) -> Array:
    """``[B, T, H, N]`` (T a multiple of chunk_size) -> ``[T / L, B, H, L, N]`` float32 (chunks leading, as
    ``lax.scan`` stacks them)."""
    batch, length, heads, size = x.shape
    x = x.astype(jnp.float32).reshape(batch, length // chunk_size, chunk_size, heads, size)
    return x.transpose(1, 0, 3, 2, 4)


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
    """Chunk-wise parallel WKV-5/6, float32 accumulation.

    Args:
      r, k, v: ``[B, T, H, N]`` receptance, key, value (any float dtype).
      w_log: ``[B, T, H, N]`` log of the per-step decay, ``<= 0`` (``-inf``, a decay of exactly 0, allowed).
      u: ``[H, N]`` bonus of the current token.
      state: ``[B, H, N, N]`` initial state ``[key, value]``, or None for zeros.
      chunk_size: tokens per chunk (the scan over chunks carries the state); a power of 2.

    Returns:
      ``y [B, T, H, N]`` in ``v.dtype`` and the final float32 state ``[B, H, N, N]``.
    """
    _validate_chunk_size(chunk_size)
    batch, length, heads, size = r.shape
    if state is None:
        state = jnp.zeros((batch, heads, size, size), jnp.float32)
    pad = [(0, 0), (0, -length % chunk_size), (0, 0), (0, 0)]
    r_c, k_c, v_c, w_c = (_to_chunks(jnp.pad(x, pad), chunk_size) for x in (r, k, v, w_log))
    u = u.astype(jnp.float32)[:, None, :]  # [H, 1, N] against [chunks, B, H, L, N]

    sums = _block_sums(w_c)
    y = _intra_chunk(r_c, k_c, v_c, u, sums)
    # Per chunk: what it adds to the state, and its total decay (exponents <= 0, see the module docstring).
    from_start, to_chunk_end = sums[-1]
    to_chunk_end = k_c * jnp.exp(to_chunk_end)
    chunk_kv = jnp.einsum("cbhsi,cbhsj->cbhij", to_chunk_end, v_c)
    chunk_decay = jnp.exp(jnp.sum(w_c, axis=-2))  # [chunks, B, H, N]

    def carry_state(s: Array, chunk: tuple[Array, Array]) -> tuple[Array, Array]:
        decay, kv = chunk
        return decay[..., None] * s + kv, s

    final, starts = jax.lax.scan(carry_state, state.astype(jnp.float32), (chunk_decay, chunk_kv))
    from_start = r_c * jnp.exp(from_start)
    y = y + jnp.einsum("cbhti,cbhij->cbhtj", from_start, starts)
    y = y.transpose(1, 0, 3, 2, 4).reshape(batch, -1, heads, size)[:, :length]
    return y.astype(v.dtype), final
