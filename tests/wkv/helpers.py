"""Shared by the WKV tests: per-case seeds, float64 copies, the relative error, a loss that reaches every
gradient (differentiated by one compiled program per form and shape) and a chunked form's chunk programs."""

import functools
import types
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwkv_jax.numerics import relative_error as rel_err  # noqa: F401  (re-exported for the WKV tests)


def seed_of(request: pytest.FixtureRequest) -> int:
    """A seed that differs per parametrised case (no single lucky seed), stable across runs."""
    return zlib.crc32(request.node.name.encode())


def to_f64(args: tuple) -> tuple:
    return tuple(jnp.asarray(x, jnp.float64) for x in args)


def loss_directions(seed: int, args: tuple) -> tuple[np.ndarray, np.ndarray]:
    """float64 random directions for y (shaped like v, ``args[2]``) and the final state (like the initial
    one, ``args[-1]``): the WKV-5/6/7 forms' ``(r, k, v, ..., state)``."""
    rng = np.random.default_rng(seed + 1)
    return rng.normal(size=args[2].shape), rng.normal(size=args[-1].shape)


def scalar_loss(form: Callable, args: tuple, directions: tuple) -> jax.Array:
    """A random projection of y and the final state of ``form(*args)``, so every gradient is exercised."""
    y, s = form(*args)
    y_dir, s_dir = directions
    return jnp.sum(y * y_dir.astype(y.dtype)) + jnp.sum(s * s_dir.astype(s.dtype))


@functools.cache
def _jitted_gradient(form: Callable) -> Callable:
    return jax.jit(jax.grad(functools.partial(scalar_loss, form)))


def gradients(form: Callable, args: tuple, seed: int) -> tuple:
    """The gradient of :func:`scalar_loss` with respect to every one of ``args``, jitted once per ``form``.

    The directions are arguments, not constants of the program: every case of one shape (any seed, decay or
    dtype of the same inputs) runs the one compiled program, here or from the persistent cache.
    """
    return _jitted_gradient(form)(args, loss_directions(seed, args))


def chunk_programs(module: types.ModuleType) -> tuple[Callable, Callable, Callable]:
    """``(forward, backward, vjp)`` of a chunked form's one chunk (``module._chunk_forward``,
    ``module._chunk_backward``, and ``vjp(inputs, cotangents)``: JAX differentiating the forward), each
    jitted (op by op every primitive compiles on its own) with the cotangents as arguments, so that the
    cases of one shape share a compiled program."""
    forward = module._chunk_forward
    vjp = jax.jit(lambda inputs, cotangents: jax.vjp(forward, *inputs)[1](cotangents))
    return jax.jit(forward), jax.jit(module._chunk_backward), vjp
