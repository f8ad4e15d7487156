"""The contract every model family must keep, written once and run on every registered family
(``test_family_contract.py``) and on a family registered inside a test
(``tests/training/test_new_family.py``).

Floats are compared by relative error over the tensor (:func:`rwkv_jax.numerics.relative_error`).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.checkpoint.official import load_official, save_official
from rwkv_jax.models.family import families
from rwkv_jax.numerics import relative_error


def tiny_presets() -> list[str]:
    """The ``*-tiny`` preset of every registered family (Eagle 5.1, 5.2 and Finch each have one)."""
    return [name for family in families() for name in family.presets if name.endswith("-tiny")]


def randomize(model: nnx.Module, seed: int = 0, scale: float = 0.1) -> nnx.Module:
    """``model`` with every parameter perturbed by ``N(0, scale^2)`` noise: the official initialisation zeroes
    the output projections, which would hide most paths (state, bonus, mixes) from the checks."""
    params = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params))))
    noisy = jax.tree.map(lambda p: p + scale * jax.random.normal(next(keys), p.shape, p.dtype), params)
    nnx.update(model, noisy)
    return model


def random_tokens(vocab_size: int, batch: int, steps: int, seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab_size, (batch, steps)), jnp.int32)


def jitted(model: nnx.Module):
    """``model(tokens, state)`` through one ``jax.jit`` of the split module."""
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda params, tokens, state: nnx.merge(graphdef, params)(tokens, state))

    def call(tokens, state=None):
        tokens = jnp.asarray(tokens, jnp.int32)
        return forward(params, tokens, model.init_state(tokens.shape[0]) if state is None else state)

    return call


def assert_prefill_equals_steps_and_pieces(model, tokens: jax.Array, cut: int) -> None:
    """``model(tokens)`` == one token at a time == ``tokens[:, :cut]`` then the rest with the state carried
    (logits and every final state leaf by relative error over the tensor; every state leaf float32).

    Measured (float32, XLA:CPU, 2026-12): logits <= 1.4e-7 (bound 2e-6), state leaves <= 8.9e-8 (bound 1e-6)
    over RWKV-4, Eagle 5.1 / 5.2, Finch and Goose.
    """
    full, full_state = model(tokens)
    state, steps = None, []
    for t in range(tokens.shape[1]):
        logits, state = model(tokens[:, t : t + 1], state)
        steps.append(logits)
    assert relative_error(jnp.concatenate(steps, axis=1), full) < 2e-6
    first, state = model(tokens[:, :cut])
    second, pieces_state = model(tokens[:, cut:], state)
    assert relative_error(jnp.concatenate([first, second], axis=1), full) < 2e-6
    for a, b in zip(jax.tree.leaves(pieces_state), jax.tree.leaves(full_state), strict=True):
        assert a.dtype == jnp.float32
        assert relative_error(a, b) < 1e-6


def assert_gradients_reach_every_parameter(model: nnx.Module, tokens: jax.Array) -> None:
    """The next-token loss on ``tokens`` has a finite gradient for every parameter: nonzero, but zero for
    those the model names unused (``model.unused_parameters()`` where it has one: RWKV-7's block-0
    ``v0 v1 v2``)."""
    unused = model.unused_parameters() if hasattr(model, "unused_parameters") else frozenset()
    graphdef, params = nnx.split(model)

    def loss(params):
        logits, _ = nnx.merge(graphdef, params)(tokens[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1))

    grads = jax.jit(jax.grad(loss))(params)
    for path, grad in nnx.to_flat_state(grads):
        value = np.asarray(grad.get_value())
        assert np.isfinite(value).all(), path
        assert (np.abs(value).max() > 0) != (tuple(path) in unused), f"gradient {path}: unused={unused}"


def assert_official_round_trip(model: nnx.Module, tokens: jax.Array, path: os.PathLike) -> None:
    """``save_official`` then ``load_official``: the same parameters, bit for bit, and the same logits."""
    save_official(model, path)
    loaded = load_official(path, dtype=str(model.config.dtype), wkv_impl=model.config.wkv_impl)
    assert type(loaded) is type(model)
    ours, theirs = nnx.state(model, nnx.Param), nnx.state(loaded, nnx.Param)
    for (name, a), (_, b) in zip(nnx.to_flat_state(ours), nnx.to_flat_state(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(name))
    np.testing.assert_array_equal(np.asarray(model(tokens)[0]), np.asarray(loaded(tokens)[0]))


def assert_plain_jit_matches_eager(model: nnx.Module, tokens: jax.Array) -> None:
    """The module is a pytree: plain ``jax.jit`` takes it as an argument, and split/merge works, giving the
    eager logits and state (measured <= 2.2e-7 relative, bound 2e-6)."""
    eager, eager_state = model(tokens)
    direct, direct_state = jax.jit(lambda model, tokens: model(tokens))(model, tokens)
    split, _ = jitted(model)(tokens)
    assert relative_error(direct, eager) < 2e-6 and relative_error(split, eager) < 2e-6
    for a, b in zip(jax.tree.leaves(direct_state), jax.tree.leaves(eager_state), strict=True):
        assert relative_error(a, b) < 2e-6


def assert_matches_formula(param, expected) -> None:
    """An initialised parameter (float32) equals RWKV-LM's formula evaluated in float64, by relative error
    over the tensor (measured <= 2.1e-7 over the RWKV-4, Eagle, Finch and Goose formulas, 2026-12)."""
    assert relative_error(np.asarray(param[...], np.float64), expected) <= 1e-6


def assert_orthogonal_with_gain(kernel, gain: float) -> None:
    """An orthogonal initialisation (RWKV-LM's ``nn.init.orthogonal_(w, gain)``): every singular value of the
    kernel equals ``gain``, by relative error over the vector (measured <= 1.6e-7 over RWKV-4, Eagle and
    Finch, 2026-12)."""
    values = np.linalg.svd(np.asarray(kernel[...], np.float64), compute_uv=False)
    assert relative_error(values, np.full_like(values, gain)) <= 1e-6
