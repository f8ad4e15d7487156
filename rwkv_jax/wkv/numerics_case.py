"""What a family declares for the numerics sweep (:mod:`rwkv_jax.numerics`): its random inputs per decay
regime and how its final state is compared. The forms, the input names and the float64 reference come from
the family's :class:`rwkv_jax.wkv.forms.WKVForms`; the case adds only what the table cannot say.

Each family's case lives beside its WKV module (``v4_numerics``, ``v6_numerics``, ``v7_numerics``) and is
set as ``numerics=`` of its :class:`rwkv_jax.models.family.Family` record.
"""

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.array_typing import Array

# Ranges of log(-w_log), sampled log-uniformly: w_log = -exp(x). Shared by the regimes of WKV-4 and WKV-5/6,
# whose models' decays lie within "mixed".
LOG_DECAY_RANGES: dict[str, tuple[float, float]] = {
    "typical": (-6.0, 1.0),  # per-step decay from 0.9975 down to 0.066
    "near0": (4.5, 5.0),  # w_log ~ -exp(5): per-step decay ~ e^-148, below float32 range
    "near1": (math.log(1e-7), math.log(1e-6)),  # w_log ~ -1e-6: decay 1 - 1e-6, nearly no forgetting
    "mixed": (math.log(1e-7), 5.0),  # the whole range, independently per element
}
LOG_DECAY_REGIMES: dict[str, str] = {
    "typical": "w_log = -exp(x), x ~ U(-6, 1): per-step decay 0.066 to 0.9975",
    "near0": "w_log ~ -exp(5): decay ~ e^-148, the state is forgotten every step",
    "near1": "w_log ~ -1e-6: decay 1 - 1e-6, nearly nothing is forgotten",
    "mixed": "w_log = -exp(x), x ~ U(log 1e-7, 5) per element: the whole range",
}


@dataclasses.dataclass(frozen=True)
class Shape:
    """Sizes of one case: B, T, H, N (a family without heads uses ``C = heads * size`` channels)."""

    batch: int = 1
    length: int = 64
    heads: int = 2
    size: int = 16

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"{field.name} must be >= 1; got {getattr(self, field.name)}")

    @property
    def sequence(self) -> tuple[int, int, int, int]:
        """``(B, T, H, N)``."""
        return (self.batch, self.length, self.heads, self.size)


# make_inputs(rng, shape, dtype, regime) -> (inputs in the WKV table's order, initial state)
MakeInputs = Callable[[np.random.Generator, Shape, str, str], tuple[tuple[Array, ...], Any]]


def final_state_as_is(final: Any, reference_final: Any) -> Array:
    """The final state itself (a single array): comparable across forms without change."""
    del reference_final
    return final


@dataclasses.dataclass(frozen=True)
class NumericsCase:
    """One family's cases of the numerics sweep.

    Attributes:
      regimes: ``{name: one-line description}`` of the decay regimes (and other input regimes), in order.
      make_inputs: ``(rng, shape, dtype, regime) -> (inputs, state)``: random inputs in the argument order
        of the family's WKV table (sequences in ``dtype``, "float32" or "bfloat16"; decays and the state in
        float32, as the models pass them) and a random initial state; the same rng draws give the same
        inputs.
      comparable_state: ``(final, reference_final) -> array``: the final state as one array that compares
        across forms (a form's state and the float64 reference's final state of the same inputs).
      default_shape: B, H, N of the sweep when none are given (T is set per row).
      float32_bounds: ``(outputs, gradients)``: the largest relative errors accepted in float32, each at
        most 10x the worst this family's forms showed over the full sweep (docs/numerics.md), so that a 10x
        regression fails (bfloat16 rows use :data:`rwkv_jax.numerics.BOUNDS`).
    """

    regimes: Mapping[str, str]
    make_inputs: MakeInputs
    comparable_state: Callable[[Any, Any], Array] = final_state_as_is
    default_shape: Shape = Shape()
    float32_bounds: tuple[float, float] = (1e-5, 1e-4)


def log_decays(rng: np.random.Generator, shape: tuple[int, ...], regime: str) -> Array:
    """float32 ``w_log = -exp(x)`` with ``x`` log-uniform over :data:`LOG_DECAY_RANGES` ``[regime]``."""
    low, high = LOG_DECAY_RANGES[regime]
    return jnp.asarray(-np.exp(rng.uniform(low, high, shape)), jnp.float32)


def normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: str = "float32") -> Array:
    """Standard normal values of ``shape`` in ``dtype``."""
    return jnp.asarray(rng.normal(size=shape), dtype)


def to_float64(tree: Any) -> Any:
    """Every array of ``tree`` as float64 (call under ``jax.enable_x64``)."""
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)), tree)
