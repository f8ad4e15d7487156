"""Shared by the WKV tests: per-case seeds, float64 copies, the relative error and a loss that reaches every
gradient."""

import zlib

import jax.numpy as jnp
import numpy as np
import pytest

from rwkv_jax.numerics import relative_error as rel_err  # noqa: F401  (re-exported for the WKV tests)


def seed_of(request: pytest.FixtureRequest) -> int:
    """A seed that differs per parametrised case (no single lucky seed), stable across runs."""
    return zlib.crc32(request.node.name.encode())


def to_f64(args: tuple) -> tuple:
    return tuple(jnp.asarray(x, jnp.float64) for x in args)


def scalar_loss(form, seed: int, args: tuple):
    """A random projection of y and the final state of ``form(*args)``, so every gradient is exercised."""
    rng = np.random.default_rng(seed + 1)
    y, s = form(*args)
    y_dir, s_dir = rng.normal(size=y.shape), rng.normal(size=s.shape)
    return jnp.sum(y * y_dir.astype(y.dtype)) + jnp.sum(s * s_dir.astype(s.dtype))
