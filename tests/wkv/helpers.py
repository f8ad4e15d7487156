"""Shared by the WKV tests: per-case seeds, float64 copies, the relative error and a loss that reaches every
gradient."""

import zlib

import jax.numpy as jnp
import numpy as np
import pytest


def seed_of(request: pytest.FixtureRequest) -> int:
    """A seed that differs per parametrised case (no single lucky seed), stable across runs."""
    return zlib.crc32(request.node.name.encode())


def to_f64(args: tuple) -> tuple:
    return tuple(jnp.asarray(x, jnp.float64) for x in args)


def rel_err(a, b) -> float:
    """``||a - b|| / ||b||`` in float64; fails on NaN in ``a``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert not np.isnan(a).any(), "result has NaN"
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def scalar_loss(form, seed: int, args: tuple):
    """A random projection of y and the final state of ``form(*args)``, so every gradient is exercised."""
    rng = np.random.default_rng(seed + 1)
    y, s = form(*args)
    y_dir, s_dir = rng.normal(size=y.shape), rng.normal(size=s.shape)
    return jnp.sum(y * y_dir.astype(y.dtype)) + jnp.sum(s * s_dir.astype(s.dtype))
