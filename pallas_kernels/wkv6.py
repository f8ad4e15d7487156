"""WKV-5/6 Pallas kernel (Eagle / Finch time mixing), forward and backward, for TPU (Mosaic) and GPU (Triton).

Math per head (state ``S [key, value]``, log decay ``w_t <= 0``, bonus ``u``)::

    y_t[j] = sum_i r_t[i] (u[i] k_t[i] v_t[j] + S[i, j]);   S[i, j] <- exp(w_t[i]) S[i, j] + k_t[i] v_t[j]

Algorithm: chunk-wise, on the sub-chunk machinery of :mod:`pallas_kernels.sub_chunks` (blocks of
``block_t`` tokens, sub-chunks of ``SUB_CHUNK`` in order with the state carried, states stored per block
for the backward; every exponent a sum of log decays over a range, ``<= 0``). Within a sub-chunk of S tokens,
with ``W(a, b)`` the sum of ``w_m`` over ``a < m < b`` per key channel::

    y_t = (r_t exp(W[0, t))) . S0  +  sum_{s<t} (r_t . exp(W(s, t)) k_s) v_s  +  (r_t . u k_t) v_t
    S_S = exp(W[0, S)) S0 + sum_s (exp(W(s, S)) k_s) v_s^T

The pairwise factors ``exp(W(s, t))`` are exact per channel (``[S*S, N]``, see the shared module). The
backward (hand-written, ``custom_vjp``) goes through the sub-chunks in reverse, giving dr, dk, dv, dw, du and
finally the gradient of the initial state.

The kernels see the state transposed, ``[value, key]``, so that the per-key decay scales columns. Inputs
float32 or bfloat16; state and accumulation float32; matmuls at HIGHEST precision. This module imports jax
only.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import sub_chunks as sc
from pallas_kernels.sub_chunks import NT, TN, BlockSizes, Decays, Pairs, dot

DEFAULT_BLOCK_T = sc.DEFAULT_BLOCK_T
TARGETS = sc.TARGETS


# ----------------------------------------------------------------------------------------------------------
# Kernel bodies. Values are float32; r, k, v, w, dy: [S, N]; u: [1, N]; states: [N(value), N(key)].


def _state_after(k, v, state_t, decays: Decays) -> jax.Array:
    return state_t * decays.total + dot(v, k * decays.out_of, TN)


def _forward(inputs, params, state_t, pairs: Pairs):
    """Outputs ``y [S, N]`` of one sub-chunk and the transposed state after it."""
    r, k, v, w = inputs
    (u,) = params
    decays = sc.decays(w, pairs)
    scores = sc.pair_scores(dot(pairs.row, r) * dot(pairs.col, k) * decays.pairs, pairs)  # [S(t), S(s)]
    bonus = jnp.sum(r * u * k, axis=1, keepdims=True)
    y = dot(r * decays.into, state_t, NT) + dot(scores, v) + bonus * v
    return y, _state_after(k, v, state_t, decays)


def _next_state(inputs, params, state_t, pairs: Pairs):
    del params
    _, k, v, w = inputs
    return _state_after(k, v, state_t, sc.decays(w, pairs))


def _backward(inputs, params, state_t, d_next, dy, pairs: Pairs):
    """Gradients of one sub-chunk given dy and ``d_next`` (of the state after it); returns
    ``((dr, dk, dv, dw), (du [1, N],), d_state)`` with ``d_state`` the gradient of the state before it."""
    r, k, v, w = inputs
    (u,) = params
    decays = sc.decays(w, pairs)
    r_rows, k_cols = dot(pairs.row, r), dot(pairs.col, k)
    scores = sc.pair_scores(r_rows * k_cols * decays.pairs, pairs)
    bonus = jnp.sum(r * u * k, axis=1, keepdims=True)
    q, k_out = r * decays.into, k * decays.out_of

    dq = dot(dy, state_t)  # through y = q @ S
    dk_out = dot(v, d_next)  # through S_next += k_out^T v
    d_bonus = jnp.sum(dy * v, axis=1, keepdims=True)
    d_pairs = sc.pick_pairs(dot(dy, v, NT), pairs) * decays.pairs  # [S*S, N], 0 where s >= t
    d_total = jnp.sum(d_next * state_t, axis=0, keepdims=True) * decays.total

    dr = dq * decays.into + dot(pairs.row, d_pairs * k_cols, TN) + d_bonus * u * k
    dk = dk_out * decays.out_of + dot(pairs.col, d_pairs * r_rows, TN) + d_bonus * u * r
    dv = dot(scores, dy, TN) + bonus * dy + dot(k_out, d_next, NT)
    # Each exponent is a 0/1 matrix times w: its gradient goes back through the transposed matrix.
    dw = (
        dot(pairs.between, d_pairs * r_rows * k_cols, TN)
        + dot(pairs.before, dq * q, TN)
        + dot(pairs.before, dk_out * k_out)
        + d_total
    )
    du = jnp.sum(d_bonus * r * k, axis=0, keepdims=True)
    d_state = d_next * decays.total + dot(dy, q, TN)
    return (dr, dk, dv, dw), (du,), d_state


WKV6 = sc.Recurrence(n_inputs=4, n_params=1, forward=_forward, next_state=_next_state, backward=_backward)


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
    sc.check_dtypes({"r": r, "k": k, "v": v, "u": u}, sc.INPUT_DTYPES, "float32 or bfloat16")
    sc.check_dtypes({"w_log": w_log, "state": state}, (jnp.float32,), "float32")
    sc.check_target(target, size)


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
    target = sc.default_target(target)
    _check_inputs(r, k, v, w_log, u, state, target)
    call = sc.Call(target, BlockSizes(chunk_size, num_warps), interpret)
    batch, length, heads, size = r.shape
    if state is None:
        state = jnp.zeros((batch, heads, size, size), jnp.float32)
    # Padding with k = 0 and w = 0 (decay 1) leaves the state unchanged; the padded outputs are dropped.
    w_log = jnp.maximum(w_log, sc.LOG_DECAY_FLOOR)
    inputs = sc.heads_major((r, k, v, w_log), chunk_size)
    y, final_t = sc.run(call, WKV6, (u.reshape(heads, 1, size),), inputs, jnp.swapaxes(state, 2, 3))
    return sc.time_major(y, length), jnp.swapaxes(final_t, 2, 3)


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
