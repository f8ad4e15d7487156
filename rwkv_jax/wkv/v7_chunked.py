"""WKV-7 chunk-wise parallel form: matmuls and a triangular inverse per chunk, the state carried between.

The recurrence (``rwkv_jax.wkv.v7``), per head with state ``S [value, key]``::

    S_t = S_{t-1} D_t + (S_{t-1} a_t) b_t^T + v_t k_t^T,   y_t = S_t r_t,   D_t = diag(exp(w_t)).

Naming the "removed value" ``u_t = S_{t-1} a_t``, it is a diagonal-decay recurrence with two rank-one
writes, ``S_t = S_{t-1} D_t + u_t b_t^T + v_t k_t^T``. Within a chunk of L tokens, with ``c_t`` the
cumulative log decay from the chunk start through t (per key channel) and ``S_0`` the state at the chunk
start, and ``G(s, t) = exp(c_t - c_s)`` the decay from after s through t::

    u_t = S_0 (exp(c_{t-1}) a_t) + sum_{s<t} u_s (b_s . G(s, t-1) a_t) + v_s (k_s . G(s, t-1) a_t)
    y_t = S_0 (exp(c_t) r_t)     + sum_{s<=t} u_s (b_s . G(s, t) r_t)  + v_s (k_s . G(s, t) r_t)
    S_L = S_0 exp(c_L)           + sum_s (u_s b_s^T + v_s k_s^T) G(s, L)

The ``u`` equations are one unit lower-triangular system per chunk, ``(I - M) u = S_0-term + N v`` with
``M[t, s] = b_s . G(s, t-1) a_t`` and ``N[t, s] = k_s . G(s, t-1) a_t`` (s < t). Everything that does not
involve ``S_0`` (the inverse included: ``u = T^-1 (a~ S_0^T) + T^-1 N v``) is computed for all chunks at once;
the loop over chunks does three small matmuls per chunk. The triangular inverse is a product of
``log2(L)`` matmuls (:func:`_unit_lower_inverse`).

Exponents. The decay factors are split as ``exp(c_t) * exp(-c_s)``, referenced to the chunk start: exact,
but ``exp(-c_s)`` grows as the chunk decays. RWKV-7's log decay is at least ``-exp(-0.5) ~ -0.61`` per step
(the model soft-clamps it; the official kernel is named "clampw" for this), so over the default 32 tokens the
factors stay below ``e^20``. Inputs whose decay over one chunk exceeds ``e^-60`` are rejected when the
values are known (:func:`check_decay_range`); under ``jit`` that is the caller's contract.

T need not be a multiple of L: the tail is padded with ``w = 0`` and ``r = k = v = a = b = 0``, which leave
the state unchanged, and the padded outputs are sliced off.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.array_typing import Array

# The fastest on this CPU (fwd + bwd vs lax.scan at B=1, H=8, N=64, T=4096: 16: 7.4x, 32: 10.6x, 64: 7.9x).
DEFAULT_CHUNK_SIZE = 32
MAX_CHUNK_LOG_DECAY = 60.0  # the largest |sum of w_log| over one chunk (exp(60) ~ 1e26 < float32 max)


def check_decay_range(w_log: Array, chunk_size: int) -> None:
    """Raises ValueError if a chunk of ``chunk_size`` steps of the strongest decay in ``w_log`` (concrete
    values only) would push ``exp(-c)`` past ``exp(MAX_CHUNK_LOG_DECAY)``."""
    if isinstance(w_log, jax.core.Tracer) or not w_log.size:
        return
    strongest = float(np.min(np.asarray(w_log, np.float32)))
    if -strongest * chunk_size > MAX_CHUNK_LOG_DECAY:
        raise ValueError(
            f"the chunked WKV-7 needs chunk_size * max(-w_log) <= {MAX_CHUNK_LOG_DECAY:g} (got "
            f"{chunk_size} * {-strongest:g}); RWKV-7's decays give w_log >= -exp(-0.5). Use a smaller "
            "chunk_size or the recurrent form"
        )


def _to_chunks(x: Array, chunk_size: int) -> Array:
    """``[B, T, H, N]`` (T a multiple of chunk_size) -> ``[T / L, B, H, L, N]`` float32."""
    batch, length, heads, size = x.shape
    x = x.astype(jnp.float32).reshape(batch, length // chunk_size, chunk_size, heads, size)
    return x.transpose(1, 0, 3, 2, 4)


def _unit_lower_inverse(strict: Array) -> Array:
    """``(I - M)^-1`` for strictly lower-triangular ``M [..., L, L]``: M is nilpotent, so the inverse is
    ``I + M + ... + M^(L-1) = (I + M)(I + M^2)(I + M^4)...``, ``ceil(log2 L)`` pairs of matmuls.

    Matmuls rather than ``jax.scipy.linalg.solve_triangular``: XLA:CPU in jax 0.10.2 deadlocked (no CPU
    use, forever) running the LAPACK-backed solve's gradient after other programs in the same process.
    """
    eye = jnp.eye(strict.shape[-1], dtype=strict.dtype)
    inverse, power = eye + strict, strict
    for _ in range(max(strict.shape[-1] - 1, 1).bit_length() - 1):
        power = power @ power
        inverse = inverse @ (eye + power)
    return inverse


def _intra_chunk(r, k, v, w, a, b):
    """The S_0-free parts of every chunk (inputs ``[C, B, H, L, N]``), see the module docstring.

    Returns ``(a_solved, u_from_v, y_from_v, r_decayed, scores_b, b_to_end, kv_to_end, chunk_decay)``: the
    solved ``T^-1 a~`` ``[.., L, N]``, ``T^-1 N v``, the ``v`` part of y, ``exp(c_t) r_t``, the masked
    ``b``-scores of y ``[.., L, L]``, ``b_s G(s, L)``, ``sum_s v_s (k_s G(s, L))^T`` ``[.., N, N]`` and
    ``exp(c_L)`` ``[.., 1, N]``.
    """
    length = r.shape[-2]
    c = jnp.cumsum(w, axis=-2)  # inclusive: c_t
    before, last = c - w, c[..., -1:, :]  # c_{t-1}, c_L
    a_decayed, r_decayed = a * jnp.exp(before), r * jnp.exp(c)
    b_undecayed, k_undecayed = b * jnp.exp(-c), k * jnp.exp(-c)
    strict = jnp.tril(jnp.ones((length, length), jnp.float32), -1)
    causal = strict + jnp.eye(length, dtype=jnp.float32)

    def scores(q: Array, key: Array, mask: Array) -> Array:
        return jnp.einsum("...tn,...sn->...ts", q, key) * mask

    inverse = _unit_lower_inverse(scores(a_decayed, b_undecayed, strict))
    a_solved = inverse @ a_decayed
    u_from_v = inverse @ (scores(a_decayed, k_undecayed, strict) @ v)
    y_from_v = scores(r_decayed, k_undecayed, causal) @ v
    to_end = jnp.exp(last - c)
    kv_to_end = jnp.einsum("...sv,...sk->...vk", v, k * to_end)
    scores_b = scores(r_decayed, b_undecayed, causal)
    return a_solved, u_from_v, y_from_v, r_decayed, scores_b, b * to_end, kv_to_end, jnp.exp(last)


@functools.partial(jax.jit, static_argnames="chunk_size")
def wkv7_chunked(
    r: Array,
    k: Array,
    v: Array,
    w_log: Array,
    a: Array,
    b: Array,
    state: Array | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Array, Array]:
    """Chunk-wise parallel WKV-7, float32 accumulation (differentiated by JAX).

    Args:
      r, k, v, w_log, a, b: ``[B, T, H, N]`` as in :func:`rwkv_jax.wkv.v7.wkv7_reference`, with
        ``chunk_size * max(-w_log) <= 60`` (see the module docstring).
      state: ``[B, H, N, N]`` initial state ``[value, key]``, or None for zeros.
      chunk_size: tokens per chunk (any positive integer; RWKV-LM's kernels use 16).

    Returns:
      ``y [B, T, H, N]`` in ``v.dtype`` and the final float32 state ``[B, H, N, N]``.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    batch, length, heads, size = r.shape
    if state is None:
        state = jnp.zeros((batch, heads, size, size), jnp.float32)
    pad = [(0, 0), (0, -length % chunk_size), (0, 0), (0, 0)]
    chunks = [_to_chunks(jnp.pad(x, pad), chunk_size) for x in (r, k, v, w_log, a, b)]
    per_chunk = _intra_chunk(*chunks)  # everything but the state, for all chunks at once

    def carry_state(s: Array, chunk: tuple[Array, ...]) -> tuple[Array, Array]:
        a_solved, u_from_v, y_from_v, r_decayed, scores_b, b_to_end, kv_to_end, decay = chunk
        u = jnp.einsum("...tk,...vk->...tv", a_solved, s) + u_from_v
        y = jnp.einsum("...tk,...vk->...tv", r_decayed, s) + scores_b @ u + y_from_v
        s = s * decay + jnp.einsum("...sv,...sk->...vk", u, b_to_end) + kv_to_end
        return s, y

    final, y = jax.lax.scan(carry_state, state.astype(jnp.float32), per_chunk)
    y = y.transpose(1, 0, 3, 2, 4).reshape(batch, -1, heads, size)[:, :length]
    return y.astype(v.dtype), final
