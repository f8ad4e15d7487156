"""RWKV-4's case of the numerics sweep: random WKV-4 inputs per decay regime, and its state made comparable.

WKV-4 states are stored at different exponents by different forms (``(num, den) * e^{max_exp}`` is what a
state means), so the state compared, and projected in the sweep's loss, is ``(num, den)`` rescaled to the
reference's final ``max_exp``.
"""

import jax.numpy as jnp
import numpy as np

from rwkv_jax.array_typing import Array
from rwkv_jax.wkv.numerics_case import LOG_DECAY_REGIMES, NumericsCase, Shape, log_decays, normal
from rwkv_jax.wkv.v4 import WKV4State

# Typical decays with keys up to |k| = 60 (e^k overflows float32 without the running maximum).
LARGE_KEY = 60.0


def make_inputs(
    rng: np.random.Generator, shape: Shape, dtype: str, regime: str
) -> tuple[tuple[Array, ...], WKV4State]:
    """``(w_log [C], u [C], k [B, T, C], v [B, T, C])`` and a random :class:`WKV4State` (``[B, C]`` each,
    ``den > 0`` as a valid state has), ``C = heads * size``; k and v in ``dtype``, the rest float32.
    ``"large_k"``: typical decays and ``k ~ U(-60, 60)``."""
    channels = shape.heads * shape.size
    sequence, row = (shape.batch, shape.length, channels), (shape.batch, channels)
    if regime == "large_k":
        k = rng.uniform(-LARGE_KEY, LARGE_KEY, sequence)
    else:
        k = rng.normal(size=sequence)
    den = jnp.asarray(rng.uniform(0.5, 2.0, row), jnp.float32)
    max_exp = jnp.asarray(rng.normal(0.0, 2.0, row), jnp.float32)
    w_log = log_decays(rng, (channels,), "typical" if regime == "large_k" else regime)
    u = normal(rng, (channels,))
    v = normal(rng, sequence, dtype)
    return (w_log, u, jnp.asarray(k, dtype), v), WKV4State(normal(rng, row), den, max_exp)


def rescaled_to_reference(final: WKV4State, reference_final: WKV4State) -> Array:
    """``[2, B, C]``: ``(num, den)`` of ``final`` at the exponent ``reference_final.max_exp``."""
    scale = jnp.exp(final.max_exp - reference_final.max_exp.astype(final.max_exp.dtype))
    return jnp.stack([final.num * scale, final.den * scale])


WKV4_NUMERICS = NumericsCase(
    regimes={
        **LOG_DECAY_REGIMES,
        "large_k": f"typical decays, keys k ~ U(-{LARGE_KEY:g}, {LARGE_KEY:g}) (e^k overflows float32)",
    },
    make_inputs=make_inputs,
    comparable_state=rescaled_to_reference,
    # Worst float32 errors of the full sweep (docs/numerics.md, commit 57e673d): outputs 2.2e-6 (state,
    # T=16384, mixed), gradients 6.6e-6 (Pallas, large_k): 4.5x and 7.6x. One known row stays outside: the
    # recurrent form's gradient at T=16384, near1 (2.3e-4; it grows linearly in T, docs/numerics.md).
    float32_bounds=(1e-5, 5e-5),
)
