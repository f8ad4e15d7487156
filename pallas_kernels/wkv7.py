"""WKV-7 Pallas kernel (RWKV-7 "Goose", the generalised delta rule), forward and backward, for TPU (Mosaic)
and GPU (Triton).

Math per head (state ``S [value, key]``, log decay ``w_t <= 0``, in-context removal ``a_t`` and replacement
``b_t``)::

    S_t = S_{t-1} diag(exp(w_t)) + (S_{t-1} a_t) b_t^T + v_t k_t^T,   y_t = S_t r_t

Algorithm: chunk-wise, on the sub-chunk machinery of :mod:`pallas_kernels.sub_chunks` (blocks of
``block_t`` tokens, sub-chunks of ``SUB_CHUNK`` in order with the state carried, states stored per block
for the backward). Within a sub-chunk of S tokens (0-based), with ``S0`` the state at its start, the removed
values ``u_t = S_{t-1} a_t`` ``[S, value]``, ``r'_t = r_t exp(w_t)`` (so that ``S_t r_t = S_{t-1} r'_t +
u_t (b_t . r_t) + v_t (k_t . r_t)``) and ``W(s, t)`` the sum of ``w_m`` over ``s < m < t`` per key channel::

    S_{t-1} x_t = S0 (exp(W[0, t)) x_t) + sum_{s<t} (u_s b_s^T + v_s k_s^T) (exp(W(s, t)) x_t)

for ``x = a`` (giving u) and ``x = r'`` (giving y). The four score matrices ``[S, S]`` ``ab, ak, rb, rk``
(``ab[t, s] = a_t . exp(W(s, t)) b_s`` for s < t, else 0, likewise the others; the pairwise decays exact per
channel, as in WKV-6) give, with ``A = a exp(W[0, t))``, ``R = r' exp(W[0, t))``::

    u = (I - ab)^-1 (A S0^T + ak v)          (unit lower triangular: (I + M)(I + M^2)(I + M^4)(I + M^8))
    y = R S0^T + rb u + rk v + (r . b) u + (r . k) v
    S_S = S0 exp(W[0, S)) + u^T (b exp(W(s, S))) + v^T (k exp(W(s, S)))

Every exponent is a sum of log decays over a range (``<= 0``); nothing divides by a decay. The four scores
are those of flash-linear-attention's DPLR chunk kernels (``Aab, Aak, Aqb, Aqk``); the math is that of
:mod:`rwkv_jax.wkv.v7_chunked` with exact pairwise decays in place of its ``exp(c_t) exp(-c_s)`` split.

Backward (hand-written, ``custom_vjp``): per sub-chunk in reverse, from the recomputed u; through the solve
``dz = P^T du`` and ``d ab = strict(dz u^T)``; the decays' gradients go back through the transposed 0/1
matrices of their ranges (as in WKV-6).

Inputs float32 or bfloat16 (w_log float32); state and accumulation float32; matmuls at HIGHEST precision.
This module imports jax only.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import sub_chunks as sc
from pallas_kernels.sub_chunks import NT, TN, BlockSizes, Pairs, dot

DEFAULT_BLOCK_T = sc.DEFAULT_BLOCK_T
TARGETS = sc.TARGETS
INPUT_NAMES = ("r", "k", "v", "w_log", "a", "b")


# ----------------------------------------------------------------------------------------------------------
# Kernel bodies. Values are float32; r, k, v, w, a, b, dy: [S, N]; states: [N(value), N(key)].


def _unit_lower_inverse(strict: jax.Array, eye: jax.Array) -> jax.Array:
    """``(I - M)^-1`` for strictly lower-triangular ``M [S, S]``: M is nilpotent, so the inverse is
    ``I + M + ... + M^(S-1) = (I + M)(I + M^2)(I + M^4)...``: matmuls only."""
    inverse, power = eye + strict, strict
    for _ in range(max(strict.shape[0] - 1, 1).bit_length() - 1):
        power = dot(power, power)
        inverse = dot(inverse, eye + power)
    return inverse


class _SubChunk:
    """The forward quantities of one sub-chunk from its inputs and start state (recomputed by the backward).

    ``decays``: :class:`~pallas_kernels.sub_chunks.Decays`; ``r_step = r'``; ``a_rows, r_rows``: ``a``, ``r'``
    of the row token t of each pair times the pair's decay ``[S*S, N]``; ``b_cols, k_cols``: ``b, k`` of the
    column token s; the scores ``ab, ak, rb, rk`` ``[S, S]``; ``inverse = (I - ab)^-1``; ``u [S, value]``.
    """

    def __init__(self, r, k, v, w, a, b, state, pairs: Pairs, docs: sc.Documents | None):
        self.docs = docs
        self.decays = d = sc.decays(w, pairs, docs)
        self.r_step = r * jnp.exp(w)
        self.a_rows, self.r_rows = (dot(pairs.row, x) * d.pairs for x in (a, self.r_step))
        self.b_cols, self.k_cols = dot(pairs.col, b), dot(pairs.col, k)
        self.ab, self.ak, self.rb, self.rk = (
            sc.pair_scores(q * key, pairs)
            for q in (self.a_rows, self.r_rows)
            for key in (self.b_cols, self.k_cols)
        )
        self.inverse = _unit_lower_inverse(self.ab, pairs.eye)
        self.u = dot(self.inverse, sc.read(a * d.into, state, docs) + dot(self.ak, v))

    def next_state(self, k, v, b, state) -> jax.Array:
        d = self.decays
        start = sc.start_state(state, self.docs)
        return start * d.total + dot(self.u, b * d.out_of, TN) + dot(v, k * d.out_of, TN)


def _within(pairs: Pairs, docs: sc.Documents | None) -> Pairs:
    """The pair matrices of the sub-chunk: restricted to its documents when it has them."""
    return pairs if docs is None else docs.pairs


def _forward(inputs, params, state, pairs: Pairs, docs: sc.Documents | None = None):
    """``y [S, value]`` of one sub-chunk and the state after it."""
    del params
    r, k, v, w, a, b = inputs
    c = _SubChunk(r, k, v, w, a, b, state, _within(pairs, docs), docs)
    diagonal_b, diagonal_k = (jnp.sum(r * x, axis=1, keepdims=True) for x in (b, k))
    y = (
        sc.read(c.r_step * c.decays.into, state, docs)
        + dot(c.rb, c.u)
        + dot(c.rk, v)
        + diagonal_b * c.u
        + diagonal_k * v
    )
    return y, c.next_state(k, v, b, state)


def _next_state(inputs, params, state, pairs: Pairs, docs: sc.Documents | None = None):
    del params
    r, k, v, w, a, b = inputs
    return _SubChunk(r, k, v, w, a, b, state, _within(pairs, docs), docs).next_state(k, v, b, state)


def _backward(inputs, params, state, d_next, dy, pairs: Pairs, docs: sc.Documents | None = None):
    """Gradients of one sub-chunk given dy and ``d_next`` (of the state after it): ``((dr, dk, dv, dw, da,
    db), (), d_state)`` with ``d_state`` the gradient of the state before it, and with ``docs`` the initial
    state's gradient ``d_init`` after it."""
    del params
    r, k, v, w, a, b = inputs
    pairs = _within(pairs, docs)
    c = _SubChunk(r, k, v, w, a, b, state, pairs, docs)
    d, u = c.decays, c.u
    A, R, B_out, K_out = a * d.into, c.r_step * d.into, b * d.out_of, k * d.out_of
    diagonal_b, diagonal_k = (jnp.sum(r * x, axis=1, keepdims=True) for x in (b, k))
    # y = R S0^T + rb u + rk v + diag_b u + diag_k v;  S_S = S0 total + u^T B_out + v^T K_out
    du = dot(B_out, d_next, NT) + dot(c.rb, dy, TN) + diagonal_b * dy
    dv = dot(K_out, d_next, NT) + dot(c.rk, dy, TN) + diagonal_k * dy
    d_diagonal_b, d_diagonal_k = (jnp.sum(dy * x, axis=1, keepdims=True) for x in (u, v))
    # u = P z, z = A S0^T + ak v: dz = P^T du, d ab = strict(dz u^T)
    dz = dot(c.inverse, du, TN)
    dv = dv + dot(c.ak, dz, TN)
    (dA, d_state_a, d_init_a), (dR, d_state_r, d_init_r) = (
        sc.read_backward(d_out, x, state, docs) for d_out, x in ((dz, A), (dy, R))
    )
    d_start = d_next * d.total  # of the state the last document grows from
    d_state = (d_start if docs is None else d_start * docs.carried) + d_state_r + d_state_a
    dB_out, dK_out = dot(u, d_next), dot(v, d_next)
    d_ab, d_ak, d_rb, d_rk = (
        sc.pick_pairs(dot(dx, x, NT) * pairs.before, pairs) for dx in (dz, dy) for x in (u, v)
    )
    from_a = d_ab * c.b_cols + d_ak * c.k_cols  # [S*S, N]: the gradients of a_rows and r_rows over the decay
    from_r = d_rb * c.b_cols + d_rk * c.k_cols
    dr_step = dot(pairs.row, from_r * d.pairs, TN) + dR * d.into
    da = dot(pairs.row, from_a * d.pairs, TN) + dA * d.into
    db = dot(pairs.col, d_ab * c.a_rows + d_rb * c.r_rows, TN) + dB_out * d.out_of + d_diagonal_b * r
    dk = dot(pairs.col, d_ak * c.a_rows + d_rk * c.r_rows, TN) + dK_out * d.out_of + d_diagonal_k * r
    dr = dr_step * jnp.exp(w) + d_diagonal_b * b + d_diagonal_k * k
    # Each exponent is a 0/1 matrix times w: its gradient goes back through the transposed matrix.
    dw = (
        dot(pairs.between, from_a * c.a_rows + from_r * c.r_rows, TN)
        + dot(pairs.before, dA * A + dR * R, TN)
        + dot(pairs.before, dB_out * B_out + dK_out * K_out)
        + _total_grad(d_next, state, d.total, docs)
        + dr_step * c.r_step
    )
    grads = (dr, dk, dv, dw, da, db)
    if docs is None:
        return grads, (), d_state
    return grads, (), d_state, d_start * (1 - docs.carried) + d_init_r + d_init_a


def _total_grad(d_next, state, total, docs: sc.Documents | None) -> jax.Array:
    """The log decays' gradient through the decay of the state over the sub-chunk (over its last document
    with ``docs``): ``[1, N]``, or ``[S, N]`` with ``docs``."""
    if docs is None:
        return jnp.sum(d_next * state, axis=0, keepdims=True) * total
    return jnp.sum(d_next * sc.start_state(state, docs), axis=0, keepdims=True) * total * docs.last


WKV7 = sc.Recurrence(
    n_inputs=6, n_params=0, forward=_forward, next_state=_next_state, backward=_backward, takes_starts=True
)


# ----------------------------------------------------------------------------------------------------------
# Public wrapper.


def _check_inputs(inputs: dict[str, jax.Array], state: jax.Array | None, target: str) -> None:
    """Raises a ValueError naming the argument that does not fit ``[B, T, H, N]`` inputs."""
    r = inputs["r"]
    if r.ndim != 4:
        raise ValueError(f"r must be [B, T, H, N]; got shape {r.shape}")
    batch, _, heads, size = r.shape
    for name, x in inputs.items():
        if x.shape != r.shape:
            raise ValueError(f"{name} must have r's shape [B, T, H, N] = {r.shape}; got {x.shape}")
    if state is not None and state.shape != (batch, heads, size, size):
        raise ValueError(f"state must be [B, H, N, N] = {(batch, heads, size, size)}; got {state.shape}")
    sequences = {name: x for name, x in inputs.items() if name != "w_log"}
    sc.check_dtypes(sequences, sc.INPUT_DTYPES, "float32 or bfloat16")
    sc.check_dtypes({"w_log": inputs["w_log"], "state": state}, (jnp.float32,), "float32")
    sc.check_target(target, size)


@functools.partial(jax.jit, static_argnames=("chunk_size", "num_warps", "target", "interpret"))
def wkv7(
    r: jax.Array,
    k: jax.Array,
    v: jax.Array,
    w_log: jax.Array,
    a: jax.Array,
    b: jax.Array,
    state: jax.Array | None = None,
    *,
    starts: jax.Array | None = None,
    chunk_size: int = DEFAULT_BLOCK_T,
    num_warps: int = 4,
    target: str | None = None,
    interpret: bool | pltpu.InterpretParams = False,
) -> tuple[jax.Array, jax.Array]:
    """WKV-7 with the Pallas kernels; differentiable (custom VJP) in every input and the initial state.

    Args:
      r, k, v, a, b: ``[B, T, H, N]`` float32 or bfloat16 (the model's ``a = -kk``, ``b = kk * iclr``).
      w_log: ``[B, T, H, N]`` float32 log decay, ``<= 0`` (any magnitude; ``-inf`` allowed).
      state: ``[B, H, N, N]`` float32 initial state ``[value, key]``, or None for zeros.
      starts: ``[B, T]`` bool, or None: the state returns to ``state`` before a token that starts a
        document (packed samples); differentiable in ``state`` through every such read.
      chunk_size: ``BlockSizes.block_t``, tokens per grid step (a power of 2, >= 16).
      num_warps: Triton warps per program (GPU).
      target: 'tpu' (Mosaic, sequential grid over blocks) or 'gpu' (Triton, loop over blocks); None picks
        'gpu' on a GPU backend and 'tpu' otherwise (interpret mode on CPU runs TPU semantics).
      interpret: run in the Pallas interpreter (True, or ``pltpu.InterpretParams`` for TPU checks).

    Returns:
      ``y [B, T, H, N]`` in ``v.dtype`` and the final float32 state ``[B, H, N, N]``.
    """
    target = sc.default_target(target)
    _check_inputs(dict(zip(INPUT_NAMES, (r, k, v, w_log, a, b), strict=True)), state, target)
    sc.check_starts(starts, r.shape[:2])
    call = sc.Call(target, BlockSizes(chunk_size, num_warps), interpret)
    batch, length, heads, size = r.shape
    if state is None:
        state = jnp.zeros((batch, heads, size, size), jnp.float32)
    # Padding with w = 0 (decay 1) and r = k = v = a = b = 0 leaves the state unchanged; the padded outputs
    # are dropped.
    w_log = jnp.maximum(w_log, sc.LOG_DECAY_FLOOR)
    inputs = sc.heads_major((r, k, v, w_log, a, b), chunk_size)
    y, final = sc.run(call, WKV7, (), inputs, state, sc.starts_column(starts, chunk_size))
    return sc.time_major(y, length), final


# ----------------------------------------------------------------------------------------------------------
# Plain jnp reference (float32 scan, one step per token).


def wkv7_float32_reference(r, k, v, w_log, a, b, state=None) -> tuple[jax.Array, jax.Array]:
    """The recurrence token by token with ``lax.scan`` in float32; shapes and dtypes as :func:`wkv7`."""
    batch, _, heads, size = r.shape
    if state is None:
        state = jnp.zeros((batch, heads, size, size), jnp.float32)

    def step(s, xs):
        r_t, k_t, v_t, w_t, a_t, b_t = xs  # [B, H, N] each
        removed = jnp.einsum("bhvk,bhk->bhv", s, a_t)
        s = (
            s * jnp.exp(w_t)[..., None, :]
            + removed[..., None] * b_t[..., None, :]
            + v_t[..., None] * k_t[..., None, :]
        )
        return s, jnp.einsum("bhvk,bhk->bhv", s, r_t)

    xs = tuple(jnp.swapaxes(x, 0, 1).astype(jnp.float32) for x in (r, k, v, w_log, a, b))
    final, ys = lax.scan(step, state.astype(jnp.float32), xs)
    return jnp.swapaxes(ys, 0, 1).astype(v.dtype), final
