"""WKV-7 chunk-wise parallel form: matmuls and a triangular inverse per chunk, with a hand-written backward.

The recurrence (``rwkv_jax.wkv.v7``), per head with state ``S [value, key]``::

    S_t = S_{t-1} D_t + (S_{t-1} a_t) b_t^T + v_t k_t^T,   y_t = S_t r_t,   D_t = diag(exp(w_t)).

Naming the "removed value" ``u_t = S_{t-1} a_t``, it is a diagonal-decay recurrence with two rank-one
writes, ``S_t = S_{t-1} D_t + u_t b_t^T + v_t k_t^T``. Within a chunk of L tokens, with ``c_t`` the
cumulative log decay from the chunk start through t (per key channel), ``S_0`` the state at the chunk
start and ``G(s, t) = exp(c_t - c_s)`` the decay from after s through t::

    u_t = S_0 (exp(c_{t-1}) a_t) + sum_{s<t} u_s (b_s . G(s, t-1) a_t) + v_s (k_s . G(s, t-1) a_t)
    y_t = S_0 (exp(c_t) r_t)     + sum_{s<=t} u_s (b_s . G(s, t) r_t)  + v_s (k_s . G(s, t) r_t)
    S_L = S_0 exp(c_L)           + sum_s (u_s b_s^T + v_s k_s^T) G(s, L)

In matrix form, with the decayed rows ``A = a exp(c_{t-1})``, ``R = r exp(c_t)``, the undecayed columns
``B = b exp(-c_s)``, ``K = k exp(-c_s)`` (all ``[L, N]``) and the masked scores ``M_ab = strict(A B^T)``,
``M_ak = strict(A K^T)``, ``Q_b = causal(R B^T)``, ``Q_k = causal(R K^T)`` (``[L, L]``)::

    u = P z,  z = A S_0^T + M_ak v,  P = (I - M_ab)^-1       (a unit lower-triangular system)
    y = R S_0^T + Q_b u + Q_k v

and the inverse is a product of ``log2(L)`` matmuls (:func:`_unit_lower_inverse`).

Backward (``jax.custom_vjp``). The forward keeps the state at every chunk start and nothing else; the
backward runs the chunks in reverse, carrying the gradient of the state, and recomputes each chunk's
scores and inverse from its inputs. Through the solve, ``dz = P^T du`` and ``dM_ab = strict(dz u^T)``;
the rest are the transposes of the matmuls above (:func:`_chunk_backward`). The gradient of the log decays
is assembled per step from the terms of the pairs it lies between (no division by a decay; see
:func:`_decay_grad`).

Exponents. The decay factors are split as ``exp(c_t) * exp(-c_s)``, referenced to the chunk start: exact,
but ``exp(-c_s)`` grows as the chunk decays. RWKV-7's log decay is at least ``-exp(-0.5) ~ -0.61`` per step
(the model soft-clamps it; the official kernel is named "clampw" for this), so over the default 32 tokens the
factors stay below ``e^20``. Inputs whose decay over one chunk exceeds ``e^-60`` are rejected when the
values are known (:func:`check_decay_range`); under ``jit`` that is the caller's contract.

Execution. As in :mod:`rwkv_jax.wkv.v6_chunked`, a loop over chunks computes one chunk of every batch row
and head at a time (``[B, H, L, N]``, small enough to stay in the CPU's caches through the chunk's dozens of
steps). T need not be a multiple of L: the tail is padded with ``w = 0`` and ``r = k = v = a = b = 0``,
which leave the state unchanged, and the padded outputs are sliced off.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.array_typing import Array

# The fastest on the benchmark's CPU (docs/wkv_training_speed.md).
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


def _masks(length: int) -> tuple[Array, Array]:
    """The strictly lower-triangular and the causal (lower-triangular) 0/1 matrices ``[L, L]``."""
    strict = jnp.tril(jnp.ones((length, length), jnp.float32), -1)
    return strict, strict + jnp.eye(length, dtype=jnp.float32)


def _scores(rows: Array, cols: Array, mask: Array) -> Array:
    """``mask * (rows @ cols^T)``: ``[..., L, N] x [..., L, N] -> [..., L, L]``."""
    return jnp.einsum("...tn,...sn->...ts", rows, cols) * mask


def _times_state(x: Array, state: Array) -> Array:
    """``x S^T``, rows read through the state: ``[..., L, key] x [..., value, key] -> [..., L, value]``."""
    return jnp.einsum("...tk,...vk->...tv", x, state)


def _outer_sum(x: Array, y: Array) -> Array:
    """``x^T y``, summed over the chunk's tokens: ``[..., L, I] x [..., L, J] -> [..., I, J]``."""
    return jnp.einsum("...ti,...tj->...ij", x, y)


class _Chunk(NamedTuple):
    """The state-free quantities of one chunk (module docstring), each over ``[B, H]``.

    The decay factors ``[L, N]``: ``to_t = exp(c_t)``, ``to_before = exp(c_{t-1})``, ``undecay = exp(-c_t)``,
    ``to_end = exp(c_L - c_t)``; ``decay = exp(c_L)`` ``[1, N]``. The decayed vectors ``A, R, B, K`` and
    ``B_end = b to_end``, ``K_end = k to_end`` ``[L, N]``; the scores ``m_ab, m_ak, q_b, q_k`` and
    ``inverse = (I - m_ab)^-1`` ``[L, L]``.
    """

    to_t: Array
    to_before: Array
    undecay: Array
    to_end: Array
    decay: Array
    A: Array
    R: Array
    B: Array
    K: Array
    B_end: Array
    K_end: Array
    m_ab: Array
    m_ak: Array
    q_b: Array
    q_k: Array
    inverse: Array


def _chunk_terms(r: Array, k: Array, w: Array, a: Array, b: Array) -> _Chunk:
    """The decay factors, decayed vectors, scores and inverse of a chunk (inputs ``[B, H, L, N]``)."""
    strict, causal = _masks(r.shape[-2])
    c = causal @ w  # inclusive cumulative sums as a matmul: XLA:CPU's cumsum is a slow reduce-window
    # c_L - c_t and c_L, each summed from its own steps (no difference of two long sums)
    to_end, decay = jnp.exp(strict.T @ w), jnp.exp(_column_sums(w))
    to_t, to_before, undecay = jnp.exp(c), jnp.exp(c - w), jnp.exp(-c)
    A, R, B, K = a * to_before, r * to_t, b * undecay, k * undecay
    m_ab = _scores(A, B, strict)
    q_b, q_k = _scores(R, B, causal), _scores(R, K, causal)
    return _Chunk(
        to_t, to_before, undecay, to_end, decay, A, R, B, K, b * to_end, k * to_end,
        m_ab, _scores(A, K, strict), q_b, q_k, _unit_lower_inverse(m_ab),
    )  # fmt: skip


def _removed(terms: _Chunk, v: Array, state: Array) -> Array:
    """``u = P (A S_0^T + M_ak v)`` ``[B, H, L, value]``: the values the chunk's tokens remove."""
    return terms.inverse @ (_times_state(terms.A, state) + terms.m_ak @ v)


def _chunk_forward(
    r: Array, k: Array, v: Array, w: Array, a: Array, b: Array, state: Array
) -> tuple[Array, Array]:
    """One chunk: r, k, v, w, a, b ``[B, H, L, N]`` and the start state ``[B, H, N, N]`` (float32) ->
    ``y [B, H, L, N]`` and the state after the chunk."""
    terms = _chunk_terms(r, k, w, a, b)
    u = _removed(terms, v, state)
    y = _times_state(terms.R, state) + terms.q_b @ u + terms.q_k @ v
    end = state * terms.decay + _outer_sum(u, terms.B_end) + _outer_sum(v, terms.K_end)
    return y, end


def _transpose(x: Array) -> Array:
    return jnp.swapaxes(x, -1, -2)


def _chunk_backward(
    r: Array, k: Array, v: Array, w: Array, a: Array, b: Array, dy: Array, state: Array, d_next: Array
) -> tuple[Array, ...]:
    """Gradients of one chunk (shapes as :func:`_chunk_forward`) given ``dy``, the start state and the
    gradient of the state after the chunk: ``(dr, dk, dv, dw, da, db, d_state)``."""
    t = _chunk_terms(r, k, w, a, b)
    strict, causal = _masks(r.shape[-2])
    u = _removed(t, v, state)
    # S_L = S_0 decay + u^T B_end + v^T K_end;  y = R S_0^T + Q_b u + Q_k v
    du = _times_state(t.B_end, d_next) + _transpose(t.q_b) @ dy
    d_b_end, d_k_end = u @ d_next, v @ d_next
    d_q_b, d_q_k = _scores(dy, u, causal), _scores(dy, v, causal)
    dR = dy @ state + d_q_b @ t.B + d_q_k @ t.K
    # u = P z, z = A S_0^T + M_ak v: through the solve, dz = P^T du and dM_ab = dz u^T
    dz = _transpose(t.inverse) @ du
    d_m_ab, d_m_ak = _scores(dz, u, strict), _scores(dz, v, strict)
    dv = _times_state(t.K_end, d_next) + _transpose(t.q_k) @ dy + _transpose(t.m_ak) @ dz
    dA = dz @ state + d_m_ab @ t.B + d_m_ak @ t.K
    dB = _transpose(d_m_ab) @ t.A + _transpose(d_q_b) @ t.R
    dK = _transpose(d_m_ak) @ t.A + _transpose(d_q_k) @ t.R
    d_state = d_next * t.decay + _outer_sum(dy, t.R) + _outer_sum(dz, t.A)
    dw = _decay_grad(
        dR * t.R - dB * t.B - dK * t.K,
        dA * t.A,
        d_b_end * t.B_end + d_k_end * t.K_end,
        _column_sums(d_next * state) * t.decay,
    )
    db = dB * t.undecay + d_b_end * t.to_end
    dk = dK * t.undecay + d_k_end * t.to_end
    return dR * t.to_t, dk, dv, dw, dA * t.to_before, db, d_state


def _column_sums(x: Array) -> Array:
    """``x [..., M, N]`` summed over M, ``[..., 1, N]``: a mat-vec, as XLA:CPU (jax 0.10.2) reduces the axes
    of these small tensors several times slower."""
    return jnp.ones((1, x.shape[-2]), x.dtype) @ x


def _decay_grad(from_rows: Array, from_before: Array, from_end: Array, from_state: Array) -> Array:
    """Gradient of a chunk's log decays ``[..., L, N]`` from per-token terms ``X_t = x_t * dx_t`` of the
    decayed vectors ``x_t = x exp(e_t)``, grouped by the steps j that their exponent ``e_t`` sums:

    - ``from_rows``: exponent ``+-c_t`` (R, and minus B and K), the steps ``j <= t``;
    - ``from_before``: ``c_{t-1}`` (A), the steps ``j < t``;
    - ``from_end``: ``c_L - c_t`` (B_end, K_end), the steps ``j > t``;
    - ``from_state`` ``[..., 1, N]``: ``c_L`` (the start state's decay), every step.

    ``dw_j = sum_{t>=j} from_rows_t + sum_{t>j} from_before_t + sum_{t<j} from_end_t + from_state``: three
    matmuls with triangular 0/1 matrices. The ``+c_t`` and ``-c_s`` terms of one pair (s, t) cancel for
    ``j <= s``, leaving the steps between them.
    """
    strict, causal = _masks(from_rows.shape[-2])
    return causal.T @ from_rows + strict.T @ from_before + strict @ from_end + from_state


def _chunk(x: Array, index: Array, chunk_size: int) -> Array:
    """Chunk ``index`` of ``x [B, T, H, N]`` as ``[B, H, L, N]`` (sliced and transposed per chunk: one
    chunk's transpose stays in the caches, a transpose of the whole sequence streams it through memory)."""
    return jax.lax.dynamic_slice_in_dim(x, index * chunk_size, chunk_size, axis=1).transpose(0, 2, 1, 3)


def _put_chunk(x: Array, index: Array, chunk_size: int, value: Array) -> Array:
    """``x [B, T, H, N]`` with chunk ``index`` replaced by ``value [B, H, L, N]``."""
    return jax.lax.dynamic_update_slice_in_dim(x, value.transpose(0, 2, 1, 3), index * chunk_size, axis=1)


def _forward_pass(inputs: tuple[Array, ...], state: Array, chunk_size: int) -> tuple[Array, Array, Array]:
    """inputs (r, k, v, w, a, b) ``[B, T, H, N]`` -> y ``[B, T, H, N]``, the final state and the states at
    every chunk start ``[T / L, B, H, N, N]``."""

    def chunk_step(index: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        y, starts, s = carry
        y_chunk, s_next = _chunk_forward(*(_chunk(x, index, chunk_size) for x in inputs), s)
        return _put_chunk(y, index, chunk_size, y_chunk), starts.at[index].set(s), s_next

    starts = jnp.zeros((inputs[0].shape[1] // chunk_size, *state.shape), state.dtype)
    y = jnp.zeros_like(inputs[2])
    y, starts, final = jax.lax.fori_loop(0, starts.shape[0], chunk_step, (y, starts, state))
    return y, final, starts


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _wkv_chunks(
    r: Array, k: Array, v: Array, w: Array, a: Array, b: Array, state: Array, chunk_size: int
) -> tuple[Array, Array]:
    """The chunk loop: r, k, v, w, a, b ``[B, T, H, N]`` (T a multiple of chunk_size), state
    ``[B, H, N, N]``, all float32 -> (y, final state). Differentiated by :func:`_wkv_chunks_backward`."""
    y, final, _ = _forward_pass((r, k, v, w, a, b), state, chunk_size)
    return y, final


def _wkv_chunks_forward(*args) -> tuple[tuple[Array, Array], tuple[Array, ...]]:
    *inputs, state, chunk_size = args
    y, final, starts = _forward_pass(tuple(inputs), state, chunk_size)
    return (y, final), (*inputs, starts)


def _wkv_chunks_backward(
    chunk_size: int, saved: tuple[Array, ...], cotangents: tuple[Array, Array]
) -> tuple[Array, ...]:
    """The chunks in reverse, carrying the gradient of the state: recomputes each chunk's scores and inverse
    from the saved inputs and the chunk's start state."""
    *inputs, starts = saved
    dy, d_final = cotangents
    last = starts.shape[0] - 1

    def chunk_step(step: Array, carry: tuple[Array, ...]) -> tuple[Array, ...]:
        index = last - step
        *grads, d_state = carry
        chunk = (_chunk(x, index, chunk_size) for x in (*inputs, dy))
        *chunk_grads, d_state = _chunk_backward(*chunk, starts[index], d_state)
        grads = (_put_chunk(g, index, chunk_size, c) for g, c in zip(grads, chunk_grads, strict=True))
        return (*grads, d_state)

    initial = (*(jnp.zeros_like(x) for x in inputs), d_final)
    return jax.lax.fori_loop(0, starts.shape[0], chunk_step, initial)


_wkv_chunks.defvjp(_wkv_chunks_forward, _wkv_chunks_backward)


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
    """Chunk-wise parallel WKV-7, float32 accumulation, with a hand-written backward.

    Args:
      r, k, v, w_log, a, b: ``[B, T, H, N]`` as in :func:`rwkv_jax.wkv.v7.wkv7_reference`, with
        ``chunk_size * max(-w_log) <= 60`` (see the module docstring).
      state: ``[B, H, N, N]`` initial state ``[value, key]``, or None for zeros.
      chunk_size: tokens per chunk (any positive integer; RWKV-LM's kernels use 16).

    Returns:
      ``y [B, T, H, N]`` in ``v.dtype`` and the final float32 state ``[B, H, N, N]``.

    Reverse-mode only (``jax.grad``, ``jax.vjp``): the backward is hand-written, so forward-mode
    (``jax.jvp``) is not defined; use :func:`~rwkv_jax.wkv.v7.wkv7_recurrent` for that.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    batch, length, heads, size = r.shape
    if state is None:
        state = jnp.zeros((batch, heads, size, size), jnp.float32)
    pad = [(0, 0), (0, -length % chunk_size), (0, 0), (0, 0)]
    padded = (jnp.pad(x.astype(jnp.float32), pad) for x in (r, k, v, w_log, a, b))
    y, final = _wkv_chunks(*padded, state.astype(jnp.float32), chunk_size)
    return y[:, :length].astype(v.dtype), final
