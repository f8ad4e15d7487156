"""Goose's case of the numerics sweep: random WKV-7 inputs as the model makes them, per regime.

The model passes ``a = -kk`` and ``b = kk * iclr`` with ``kk`` the key normalised per head and the in-context
learning rate ``iclr`` in (0, 1), and soft-clamps its log decays to ``w_log = -exp(-0.5) * sigmoid(x)``, in
``[-exp(-0.5), 0)`` (the chunked form's exponents rely on that bound: ``chunk_size * max(-w_log) <= 60``).
The regimes push each of these to its end: decays near 1, the strongest decay the model allows, and an
in-context rate near 1 (the state forgets nearly all it held along ``kk`` every step).
"""

import jax.numpy as jnp
import numpy as np

from rwkv_jax.array_typing import Array
from rwkv_jax.wkv.numerics_case import LOG_DECAY_RANGES, NumericsCase, Shape, normal

STRONGEST_LOG_DECAY = -float(np.exp(-0.5))  # the model's limit: per-step decay exp(-0.607) = 0.545
LARGE_ICLR = (0.999, 1.0)  # the extreme in-context learning rates (1: the model's limit)

REGIMES = {
    "typical": "w_log = -exp(-0.5) sigmoid(3 z), z ~ N(0, 1) (as the model's soft clamp); iclr = sigmoid(z')",
    "near1": "w_log ~ -1e-6: decay 1 - 1e-6, nearly nothing is forgotten; iclr = sigmoid(z')",
    "strongest": "w_log = -exp(-0.5) everywhere: the strongest decay the model allows; iclr = sigmoid(z')",
    "large_iclr": f"typical decays, iclr ~ U{LARGE_ICLR}: the state forgets nearly all it held along kk",
}


def _log_decays(rng: np.random.Generator, shape: tuple[int, ...], regime: str) -> np.ndarray:
    """float64 ``w_log`` of ``regime`` (see :data:`REGIMES`)."""
    if regime == "near1":
        low, high = LOG_DECAY_RANGES["near1"]
        return -np.exp(rng.uniform(low, high, shape))
    if regime == "strongest":
        return np.full(shape, STRONGEST_LOG_DECAY)
    return STRONGEST_LOG_DECAY / (1 + np.exp(-3 * rng.normal(size=shape)))


def _in_context_rates(rng: np.random.Generator, shape: tuple[int, ...], regime: str) -> np.ndarray:
    """float64 ``iclr`` in (0, 1]: a sigmoid of a normal, or :data:`LARGE_ICLR` for ``"large_iclr"``."""
    if regime == "large_iclr":
        return rng.uniform(*LARGE_ICLR, shape)
    return 1 / (1 + np.exp(-rng.normal(size=shape)))


def make_inputs(
    rng: np.random.Generator, shape: Shape, dtype: str, regime: str
) -> tuple[tuple[Array, ...], Array]:
    """``(r, k, v, w_log, a, b)``, each ``[B, T, H, N]``, and a random state ``[B, H, N, N]``: ``a = -kk``,
    ``b = kk * iclr`` with ``kk`` a unit vector per head; r, k, v, a, b in ``dtype``, w_log and the state
    float32."""
    r, k, v = (normal(rng, shape.sequence, dtype) for _ in range(3))
    kk = rng.normal(size=shape.sequence)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    iclr = _in_context_rates(rng, shape.sequence, regime)
    w_log = jnp.asarray(_log_decays(rng, shape.sequence, regime), jnp.float32)
    a, b = jnp.asarray(-kk, dtype), jnp.asarray(kk * iclr, dtype)
    state = normal(rng, (shape.batch, shape.heads, shape.size, shape.size))
    return (r, k, v, w_log, a, b), state


# Worst float32 errors of the full sweep (docs/numerics.md, commit 57e673d): outputs 2.6e-7 (scan, T=16384,
# near1), gradients 6.2e-7 (chunked, T=16, strongest): bounds 7.7x and 8.1x.
WKV7_NUMERICS = NumericsCase(regimes=REGIMES, make_inputs=make_inputs, float32_bounds=(2e-6, 5e-6))
