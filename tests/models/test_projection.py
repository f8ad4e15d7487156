"""rwkv_jax.models.projection: the same values and gradients as ``jnp.matmul``, with no transposed copy."""

import jax
import jax.numpy as jnp
import pytest

from rwkv_jax.models.projection import project
from rwkv_jax.numerics import relative_error


def _inputs(dtype: jnp.dtype, shape: tuple[int, ...] = (2, 8, 16)) -> tuple[jax.Array, jax.Array]:
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], shape, jnp.float32).astype(dtype)
    kernel = jax.random.normal(keys[1], (shape[-1], 24), jnp.float32).astype(dtype)
    return x, kernel


def _loss(matmul):
    # An elementwise producer before and a nonlinearity after, as in a layer.
    return lambda x, kernel: jnp.sum(jnp.sin(matmul(jnp.tanh(x), kernel)))


@pytest.mark.parametrize("shape", [(2, 8, 16), (16,)])
def test_project_value_and_gradients_equal_matmul(shape):
    x, kernel = _inputs(jnp.float64, shape)
    assert relative_error(project(x, kernel), jnp.matmul(x, kernel)) == 0.0
    ours = jax.grad(_loss(project), (0, 1))(x, kernel)
    theirs = jax.grad(_loss(jnp.matmul), (0, 1))(x, kernel)
    for a, b in zip(ours, theirs, strict=True):
        assert relative_error(a, b) < 1.6e-15  # measured 0 to 1.6e-16 (float64)


def test_project_gradients_keep_bfloat16_dtypes():
    x, kernel = _inputs(jnp.bfloat16)
    grads = jax.grad(_loss(project), (0, 1))(x, kernel)
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]
    theirs = jax.grad(_loss(jnp.matmul), (0, 1))(x, kernel)
    for a, b in zip(grads, theirs, strict=True):
        assert relative_error(a.astype(jnp.float32), b.astype(jnp.float32)) < 1e-2  # measured 0 to 4e-3


def test_project_gradient_compiles_without_transpose():
    # jnp.matmul's kernel gradient makes XLA:CPU write a transposed copy of an operand (2 here); ours none.
    x, kernel = _inputs(jnp.float32, (4, 64, 32))
    ours = jax.jit(jax.grad(_loss(project), (0, 1))).lower(x, kernel).compile().as_text()
    theirs = jax.jit(jax.grad(_loss(jnp.matmul), (0, 1))).lower(x, kernel).compile().as_text()
    assert " transpose(" in theirs  # the pattern this module avoids is still what XLA does by default
    assert " transpose(" not in ours
