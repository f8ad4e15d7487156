"""Eagle / Finch's case of the numerics sweep: random WKV-5/6 inputs per decay regime."""

import numpy as np

from rwkv_jax.array_typing import Array
from rwkv_jax.wkv.numerics_case import LOG_DECAY_REGIMES, NumericsCase, Shape, log_decays, normal


def make_inputs(
    rng: np.random.Generator, shape: Shape, dtype: str, regime: str
) -> tuple[tuple[Array, ...], Array]:
    """``(r, k, v [B, T, H, N] in dtype, w_log [B, T, H, N], u [H, N])`` and a random state
    ``[B, H, N, N]``, float32 but for r, k, v; the decays from :data:`LOG_DECAY_RANGES` ``[regime]``."""
    r, k, v = (normal(rng, shape.sequence, dtype) for _ in range(3))
    w_log = log_decays(rng, shape.sequence, regime)
    u = normal(rng, (shape.heads, shape.size))
    return (r, k, v, w_log, u), normal(rng, (shape.batch, shape.heads, shape.size, shape.size))


# Worst float32 errors of the full sweep (docs/numerics.md, commit 57e673d): outputs 3.4e-6 and gradients
# 3.4e-6, both the recurrent form at T=16384, near1: bounds 2.9x and 8.8x.
WKV6_NUMERICS = NumericsCase(regimes=LOG_DECAY_REGIMES, make_inputs=make_inputs, float32_bounds=(1e-5, 3e-5))
