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
``B = b exp(-c_s)``, ``K = k exp(-c_s)`` (all ``[L, N]``), the masked scores ``M_ab = strict(A B^T)``,
``M_ak = strict(A K^T)``, ``Q_b = causal(R B^T)``, ``Q_k = causal(R K^T)`` (``[L, L]``) and the state
carried transposed, ``S^T [key, value]`` (so that ``A S_0^T`` is a plain matmul)::

    u = P z,  z = A S_0^T + M_ak v,  P = (I - M_ab)^-1       (a unit lower-triangular system)
    y = R S_0^T + Q_b u + Q_k v
    S_L^T = exp(c_L) * (S_0^T + B^T u + K^T v)                (G(s, L) = exp(c_L) exp(-c_s))

The inverse is a product of ``log2(L)`` matmuls (:func:`_unit_lower_inverse`). The pairs are stacked along
the token axis, ``X = [A; R]``, ``Y = [B; K]``, ``U = [u; v]``, so that the four scores are one matmul
``X Y^T`` and each product with the state is one matmul.

Backward (``jax.custom_vjp``). The forward keeps the state at every chunk start and nothing else; the
backward runs the chunks in reverse, carrying the gradient of the state, and recomputes each chunk's
scores, inverse and removed values from its inputs and start state. Through the solve, ``dz = P^T du`` and
``dM_ab = strict(dz u^T)``; the rest are the transposes of the matmuls above (:func:`_block_backward`).
The gradient of the log decays is assembled per step from the terms of the pairs it lies between (no
division by a decay; see :func:`_decay_grad`); that of ``c_L``, which scales the whole end state, is
``sum_value(dS_L^T * S_L^T)``, from the end state that the backward carries (the next chunk's start).

Chunks and blocks. The chunk (``chunk_size``) is the unit of the states kept for the backward; within a
chunk the math runs per block of :data:`BLOCK_SIZE` tokens, one block after another. The work within a
block grows with its length (the ``[L, L]`` scores and inverse), the states kept shrink with the chunk's:
blocks of 16 in chunks of 32 or 64 have both. The backward recomputes the states at the blocks' starts
from the chunk's.

Exponents. The decay factors are split as ``exp(c_t) * exp(-c_s)``, referenced to the block start: exact,
but ``exp(-c_s)`` grows as the block decays. RWKV-7's log decay is at least ``-exp(-0.5) ~ -0.61`` per
step (the model soft-clamps it; the official kernel is named "clampw" for this), so over 16 tokens the
factors stay below ``e^10``. The end state is written with the same undecayed rows, ``exp(c_L) (S_0^T +
Y^T U)``, and its gradient reaches them scaled by ``exp(c_L)``. Inputs whose decay over one chunk exceeds
``e^-60`` are rejected when the values are known (:func:`check_decay_range`); under ``jit`` that is the
caller's contract.

Execution. As in :mod:`rwkv_jax.wkv.v6_chunked`, a loop over chunks computes one chunk of every batch row
and head at a time (``[B, H, L, N]``, small enough to stay in the CPU's caches through the chunk's dozens of
steps). T need not be a multiple of L: the tail is padded with ``w = 0`` and ``r = k = v = a = b = 0``,
which leave the state unchanged, and the padded outputs are sliced off.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.array_typing import Array
from rwkv_jax.wkv.forms import check_starts
from rwkv_jax.wkv.v6_chunked import batched, get_chunk, matmul_tn, put_chunk, put_state, row_sums

# One block per chunk: the fastest forward + backward of chunks of 16, 32 and 64 on CPU
# (docs/wkv_training_speed.md), for the most stored states (one per 16 tokens). The Pallas form has its own
# default (``rwkv_jax.wkv.v7.PALLAS_CHUNK_SIZE``).
DEFAULT_CHUNK_SIZE = 16
BLOCK_SIZE = 16  # tokens per block of the intra-chunk math (a chunk is the unit of the states kept)
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


def _masks(length: int) -> tuple[np.ndarray, np.ndarray]:
    """The strictly lower-triangular and the causal (lower-triangular) 0/1 matrices ``[L, L]``."""
    strict = np.tril(np.ones((length, length), np.float32), -1)
    return strict, strict + np.eye(length, dtype=np.float32)


def _score_mask(length: int) -> np.ndarray:
    """The mask of the stacked scores ``[[M_ab, M_ak], [Q_b, Q_k]]`` ``[2L, 2L]``: the removals (rows of A)
    see the tokens before, the outputs (rows of R) the tokens up to and including their own."""
    strict, causal = _masks(length)
    return np.block([[strict, strict], [causal, causal]])


def _nt(x: Array, y: Array) -> Array:
    """``x y^T``: ``[..., M, K] x [..., N, K] -> [..., M, N]``."""
    return jnp.einsum("...mk,...nk->...mn", x, y)


def _halves(x: Array) -> tuple[Array, Array]:
    """The top and bottom halves of ``x [..., 2L, N]`` along the stacked axis."""
    half = x.shape[-2] // 2
    return x[..., :half, :], x[..., half:, :]


def _stack(top: Array, bottom: Array) -> Array:
    return jnp.concatenate([top, bottom], axis=-2)


class _Block(NamedTuple):
    """The state-free quantities of one block (module docstring), over ``[B, H]``; the pairs of the module
    docstring are stacked along the token axis, so that each pair is one matmul.

    The decay factors: ``row_decay = [exp(c_{t-1}); exp(c_t)]`` ``[2L, N]`` (of ``[a; r]``), ``undecay =
    [exp(-c_s); exp(-c_s)]`` (of ``[b; k]``) and ``decay = exp(c_L)`` ``[1, N]``. The decayed vectors
    ``X = [A; R]``, ``Y = [B; K]`` ``[2L, N]`` and ``written``, the rows of ``Y`` that reach the block's
    end (all of them; with documents, the last document's); ``scores = [[M_ab, M_ak], [Q_b, Q_k]]``
    ``[2L, 2L]`` and ``inverse = (I - M_ab)^-1`` ``[L, L]``.
    """

    row_decay: Array
    undecay: Array
    decay: Array
    X: Array
    Y: Array
    written: Array
    scores: Array
    inverse: Array
    mask: Array
    documents: "_Documents | None"


class _Documents(NamedTuple):
    """Packed documents within a block (``starts``): ``same [B, 1, L, L]`` 1 where tokens t and s are in the
    same document, ``first``/``last`` ``[B, 1, L, 1]`` 1 for the tokens of the block's first/last document
    (the first reads the carried state, later ones the call's initial state ``init [B, H, key, value]``)."""

    same: Array
    first: Array
    last: Array
    init: Array


def _documents(starts: Array, init: Array) -> _Documents:
    """The masks of a block's documents from ``starts [B, 1, L, 1]`` (float 0/1)."""
    _, causal = _masks(starts.shape[-2])
    ids = batched(causal, starts) @ starts  # documents begun in the block up to t
    return _Documents(
        (ids == _transpose(ids)).astype(jnp.float32),
        (ids == 0).astype(jnp.float32),
        (ids == ids[..., -1:, :]).astype(jnp.float32),
        init,
    )


def _read(X: Array, state: Array, documents: "_Documents | None") -> Array:
    """``X [.., M, key] @ state``; with documents, rows (stacked ``[a; r]`` if M = 2L) after a start read the
    initial state."""
    if documents is None:
        return X @ state
    first = documents.first if X.shape[-2] == documents.first.shape[-2] else _stack(*(documents.first,) * 2)
    return (X * first) @ state + (X * (1 - first)) @ documents.init


def _start_state(state: Array, documents: "_Documents | None") -> Array:
    """The state the block's last document starts from: the carried one, or the initial one after a start."""
    if documents is None:
        return state
    carried = documents.first[..., -1:, :]
    return carried * state + (1 - carried) * documents.init


def _last_rows(documents: _Documents | None) -> Array | float:
    """1 on the stacked rows ``[2L, 1]`` of the block's last document (the rows that reach its end)."""
    return 1.0 if documents is None else _stack(documents.last, documents.last)


def _block_terms(r: Array, k: Array, w: Array, a: Array, b: Array, documents: _Documents | None) -> _Block:
    """The decay factors, decayed vectors, scores and inverse of a block (inputs ``[B, H, L, N]``). With
    documents, the cumulative decays restart at each start and the scores across documents are masked."""
    length = r.shape[-2]
    _, causal = _masks(length)
    # c_t and c_L in one matmul (XLA:CPU's cumsum is a slow reduce-window)
    if documents is None:
        sums = batched(np.concatenate([causal, np.ones((1, length), np.float32)]), w) @ w
        mask = _score_mask(length)
    else:
        matrix = jnp.concatenate([causal * documents.same, _transpose(documents.last)], axis=-2)
        sums = matrix @ w
        mask = _score_mask(length) * jnp.tile(documents.same, (2, 2))
    c, total = sums[..., :length, :], sums[..., length:, :]
    row_decay, undecay = jnp.exp(_stack(c - w, c)), jnp.exp(_stack(-c, -c))
    X, Y = _stack(a, r) * row_decay, _stack(b, k) * undecay
    written = Y * _last_rows(documents)
    scores = _nt(X, Y) * mask
    inverse = _unit_lower_inverse(scores[..., :length, :length])
    return _Block(row_decay, undecay, jnp.exp(total), X, Y, written, scores, inverse, mask, documents)


def _removed(terms: _Block, v: Array, read: Array) -> Array:
    """``U = [u; v]`` ``[B, H, 2L, value]``, ``u = P (A S_0^T + M_ak v)`` the values the block's tokens
    remove, given ``read = A S_0^T`` ``[B, H, L, value]``."""
    length = v.shape[-2]
    return _stack(terms.inverse @ (read + terms.scores[..., :length, length:] @ v), v)


def _block_forward(
    r: Array, k: Array, v: Array, w: Array, a: Array, b: Array, state: Array, documents: _Documents | None
) -> tuple[Array, Array]:
    """One block: r, k, v, w, a, b ``[B, H, L, N]`` and the start state ``[B, H, key, value]`` (float32,
    transposed: each row of ``X`` reads it as a plain matmul) -> ``y [B, H, L, N]`` and the state after
    the block."""
    terms = _block_terms(r, k, w, a, b, documents)
    length = v.shape[-2]
    reads = _read(terms.X, state, documents)  # [A; R] S_0^T: one matmul for both halves
    U = _removed(terms, v, reads[..., :length, :])
    y = reads[..., length:, :] + terms.scores[..., length:, :] @ U
    # exp(c_L) scales the start state and every written row alike: once, after their sum
    return y, _transpose(terms.decay) * (_start_state(state, documents) + matmul_tn(terms.written, U))


def _transpose(x: Array) -> Array:
    return jnp.swapaxes(x, -1, -2)


def _block_backward(
    r: Array,
    k: Array,
    v: Array,
    w: Array,
    a: Array,
    b: Array,
    dy: Array,
    state: Array,
    end: Array,
    d_next: Array,
    documents: _Documents | None,
) -> tuple[Array, ...]:
    """Gradients of one block (shapes as :func:`_block_forward`) given ``dy``, the start and end states and
    the gradient of the end state: ``(dr, dk, dv, dw, da, db, d_state, d_init)`` (``d_init`` the initial
    state's, None without documents)."""
    t = _block_terms(r, k, w, a, b, documents)
    length = v.shape[-2]
    U = _removed(t, v, _read(t.X[..., :length, :], state, documents))
    # S_L = decay (S_0 + W^T U);  y = R S_0 + [Q_b, Q_k] U;  u = P z, z = A S_0 + M_ak v  (W: t.written)
    d_through = d_next * _transpose(t.decay)  # the gradient of S_0 + W^T U
    from_end = t.written @ d_through
    du = from_end[..., :length, :] + matmul_tn(t.scores[..., length:, :length], dy)
    D = _stack(matmul_tn(t.inverse, du), dy)  # [dz; dy]: through the solve, dz = P^T du
    dv = from_end[..., length:, :] + matmul_tn(t.scores[..., length:], D)
    d_scores = _nt(D, U) * t.mask
    dX = _read(D, _transpose(state), _transposed(documents)) + d_scores @ t.Y
    # W's gradient U d_through^T as a plain matmul with the transposed state gradient formed first: XLA:CPU
    # ran it slower with the transpose folded into the product (docs/wkv_training_speed.md, sixth pass)
    dW = U @ (_transpose(d_next) * t.decay)
    dY = matmul_tn(d_scores, t.X) + dW * _last_rows(documents)  # through the scores and through W
    if documents is None:
        d_state, d_init = d_through + matmul_tn(t.X, D), None
    else:  # each state's part: the rows (and the end) that read it
        first, carried = _stack(documents.first, documents.first), documents.first[..., -1:, :]
        d_state = carried * d_through + matmul_tn(t.X * first, D)
        d_init = (1 - carried) * d_through + matmul_tn(t.X * (1 - first), D)
    from_a, from_r = _halves(dX * t.X)
    end_scale = _transpose(row_sums(d_next * end))  # the gradient of c_L, which scales all of S_L
    dw = _decay_grad(from_r - sum(_halves(dY * t.Y)), from_a, end_scale, documents)
    da, dr = _halves(dX * t.row_decay)
    db, dk = _halves(dY * t.undecay)
    return dr, dk, dv, dw, da, db, d_state, d_init


def _transposed(documents: _Documents | None) -> _Documents | None:
    return None if documents is None else documents._replace(init=_transpose(documents.init))


def _blocks(chunk_size: int) -> int:
    """The number of blocks of a chunk: blocks of :data:`BLOCK_SIZE` tokens when they divide it."""
    return chunk_size // BLOCK_SIZE if chunk_size % BLOCK_SIZE == 0 else 1


def _split(x: Array, blocks: int) -> list[Array]:
    """``x [..., L, N]`` cut into ``blocks`` equal blocks along L."""
    return jnp.split(x, blocks, axis=-2)


Restarts = tuple[Array, Array] | None
"""Packed documents: ``(starts [B, T, 1, 1] float 0/1, initial state [B, H, key, value])``, or None."""


def _block_documents(restarts: Restarts, blocks: int) -> list[_Documents | None]:
    """Each block's documents of a chunk's ``restarts`` (starts ``[B, 1, L, 1]``)."""
    if restarts is None:
        return [None] * blocks
    starts, init = restarts
    return [_documents(block, init) for block in _split(starts, blocks)]


def _chunk_forward(
    r: Array, k: Array, v: Array, w: Array, a: Array, b: Array, state: Array, restarts: Restarts = None
) -> tuple[Array, Array]:
    """One chunk, block after block (shapes as :func:`_block_forward`)."""
    ys, count = [], _blocks(r.shape[-2])
    blocks = zip(
        *(_split(x, count) for x in (r, k, v, w, a, b)), _block_documents(restarts, count), strict=True
    )
    for *block, documents in blocks:
        y, state = _block_forward(*block, state, documents)
        ys.append(y)
    return jnp.concatenate(ys, axis=-2), state


def _chunk_backward(
    r: Array,
    k: Array,
    v: Array,
    w: Array,
    a: Array,
    b: Array,
    dy: Array,
    state: Array,
    end: Array,
    d_next: Array,
    restarts: Restarts = None,
) -> tuple[Array, ...]:
    """Gradients of :func:`_chunk_forward` given ``dy``, the start and end states and the gradient of the
    end state: ``(dr, dk, dv, dw, da, db, d_state)``, and with ``restarts`` the initial state's gradient
    ``d_init`` after them. The states at the blocks' starts are recomputed from the chunk's (the forward's
    ``y`` part of that is dead code, and XLA shares the rest with the blocks' backward)."""
    count = _blocks(r.shape[-2])
    blocks = list(zip(*(_split(x, count) for x in (r, k, v, w, a, b, dy)), strict=True))
    documents = _block_documents(restarts, count)
    starts = [state]
    for block, docs in zip(blocks[:-1], documents, strict=False):
        starts.append(_block_forward(*block[:-1], starts[-1], docs)[1])
    grads, d_init = [], None
    ends = [*starts[1:], end]
    for block, start, block_end, docs in reversed(list(zip(blocks, starts, ends, documents, strict=True))):
        *block_grads, d_next, d_block_init = _block_backward(*block, start, block_end, d_next, docs)
        grads.insert(0, block_grads)
        d_init = d_block_init if d_init is None else d_init + d_block_init
    grads = (*(jnp.concatenate(g, axis=-2) for g in zip(*grads, strict=True)), d_next)
    return grads if restarts is None else (*grads, d_init)


def _decay_grad(from_rows: Array, from_before: Array, from_end: Array, documents: _Documents | None) -> Array:
    """Gradient of a block's log decays ``[..., L, N]`` from per-token terms ``X_t = x_t * dx_t`` of the
    decayed vectors ``x_t = x exp(e_t)``, grouped by the steps j that their exponent ``e_t`` sums:

    - ``from_rows``: exponent ``+-c_t`` (R, and minus B and K), the steps ``j <= t``;
    - ``from_before``: ``c_{t-1}`` (A), the steps ``j < t``;
    - ``from_end`` ``[..., 1, N]``: ``c_L`` (the decay of the end state, start state and written rows
      alike), every step.

    ``dw_j = sum_{t>=j} (from_rows + from_before)_t - from_before_j + from_end``: one matmul with a
    triangular 0/1 matrix. The ``+c_t`` and ``-c_s`` terms of one pair (s, t) cancel for ``j <= s``, leaving
    the steps between them; a written row's ``-c_s`` and the end's ``c_L`` leave the steps after s.

    With documents the exponents sum the steps of their own document: the triangular matrix is masked to
    pairs within a document, and the end term reaches only the block's last document.
    """
    _, causal = _masks(from_rows.shape[-2])
    if documents is None:
        within, last = batched(causal.T, from_rows), 1.0
    else:
        within, last = _transpose(causal * documents.same), documents.last
    return within @ (from_rows + from_before) + (last * from_end - from_before)


def _chunk_restarts(restarts: Restarts, index: Array, chunk_size: int) -> Restarts:
    return None if restarts is None else (get_chunk(restarts[0], index, chunk_size), restarts[1])


def _forward_pass(
    inputs: tuple[Array, ...], state: Array, restarts: Restarts, chunk_size: int
) -> tuple[Array, Array, Array]:
    """inputs (r, k, v, w, a, b) ``[B, T, H, N]`` -> y ``[B, T, H, N]``, the final state and the states at
    every chunk start ``[T / L, B, H, key, value]``."""

    def chunk_step(index: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        y, starts, s = carry
        chunk = (get_chunk(x, index, chunk_size) for x in inputs)
        y_chunk, s_next = _chunk_forward(*chunk, s, _chunk_restarts(restarts, index, chunk_size))
        return put_chunk(y, index, chunk_size, y_chunk), put_state(starts, index, s), s_next

    starts = jnp.zeros((inputs[0].shape[1] // chunk_size, *state.shape), state.dtype)
    y = jnp.zeros_like(inputs[2])
    y, starts, final = jax.lax.fori_loop(0, starts.shape[0], chunk_step, (y, starts, state))
    return y, final, starts


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _wkv_chunks(
    r: Array,
    k: Array,
    v: Array,
    w: Array,
    a: Array,
    b: Array,
    state: Array,
    restarts: Restarts,
    chunk_size: int,
) -> tuple[Array, Array]:
    """The chunk loop: r, k, v, w, a, b ``[B, T, H, N]`` (T a multiple of chunk_size), state
    ``[B, H, key, value]``, all float32, and the packed documents -> (y, final state). Differentiated by
    :func:`_wkv_chunks_backward`."""
    y, final, _ = _forward_pass((r, k, v, w, a, b), state, restarts, chunk_size)
    return y, final


def _wkv_chunks_forward(*args) -> tuple[tuple[Array, Array], tuple[Any, ...]]:
    *inputs, state, restarts, chunk_size = args
    y, final, starts = _forward_pass(tuple(inputs), state, restarts, chunk_size)
    return (y, final), (*inputs, starts, final, restarts)


def _wkv_chunks_backward(
    chunk_size: int, saved: tuple[Array, ...], cotangents: tuple[Array, Array]
) -> tuple[Array, ...]:
    """The chunks in reverse, carrying the gradient of the state and the chunk's end state (the start state
    of the chunk after it, the final state for the last): recomputes each chunk's scores and inverse from
    the saved inputs and the chunk's start state."""
    *inputs, starts, final, restarts = saved
    dy, d_final = cotangents
    last = starts.shape[0] - 1

    def chunk_step(step: Array, carry: tuple[Any, ...]) -> tuple[Any, ...]:
        index = last - step
        *grads, end, d_state, d_init = carry
        chunk = (get_chunk(x, index, chunk_size) for x in (*inputs, dy))
        chunk_restarts = _chunk_restarts(restarts, index, chunk_size)
        start = starts[index]
        chunk_grads = _chunk_backward(*chunk, start, end, d_state, chunk_restarts)
        if d_init is not None:
            d_init = d_init + chunk_grads[-1]
        *chunk_grads, d_state = chunk_grads[:7]
        grads = (put_chunk(g, index, chunk_size, c) for g, c in zip(grads, chunk_grads, strict=True))
        return (*grads, start, d_state, d_init)

    d_init = None if restarts is None else jnp.zeros_like(restarts[1])
    initial = (*(jnp.zeros_like(x) for x in inputs), final, d_final, d_init)
    *grads, _, d_state, d_init = jax.lax.fori_loop(0, starts.shape[0], chunk_step, initial)
    d_restarts = None if restarts is None else (jnp.zeros_like(restarts[0]), d_init)
    return (*grads, d_state, d_restarts)


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
    starts: Array | None = None,
) -> tuple[Array, Array]:
    """Chunk-wise parallel WKV-7, float32 accumulation, with a hand-written backward.

    Args:
      r, k, v, w_log, a, b: ``[B, T, H, N]`` as in :func:`rwkv_jax.wkv.v7.wkv7_reference`, with
        ``chunk_size * max(-w_log) <= 60`` (see the module docstring).
      state: ``[B, H, N, N]`` initial state ``[value, key]``, or None for zeros.
      chunk_size: tokens per chunk (any positive integer; RWKV-LM's kernels use 16).
      starts: ``[B, T]`` bool, or None: before a token that starts a document the state returns to
        ``state``. Within a block the cumulative decays restart at a start, the scores across documents are
        masked, and rows after a start read the initial state rather than the carried one.

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
    initial = _transpose(state.astype(jnp.float32))  # [key, value]
    restarts = None
    if starts is not None:
        check_starts(starts, batch, length)
        restarts = (jnp.pad(starts.astype(jnp.float32)[..., None, None], pad), initial)
    y, final = _wkv_chunks(*padded, initial, restarts, chunk_size)
    return y[:, :length].astype(v.dtype), _transpose(final)
