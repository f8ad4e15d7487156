"""Packed documents at the model level: ``model(tokens, state, starts=...)`` gives, per document, the logits
and parameter gradients of running that document alone from ``state`` (each family's tiny preset).

The state is a random one (token shifts and WKV states, as a tuned initial state would be; RWKV-4's WKV
state stays empty: its running maximum of -1e38 scales any values away); the packed call takes the WKV form
AUTO picks with a mask (RECURRENT). One tiny preset per family (Finch for WKV-5/6: its data-dependent token
shift is the widest use of the shifted input), made smaller (one layer: the blocks all take the same path;
32 channels and tokens) so that the test costs about three compiles per family.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwkv_jax.numerics import relative_error
from rwkv_jax.presets import get_preset
from tests.models.contract import random_tokens, randomize

# (preset, WKV form): the recurrent forms, and Goose's chunked form (its own reset code, what AUTO picks)
CASES = (
    ("rwkv4-tiny", "recurrent"),
    ("finch-tiny", "recurrent"),
    ("goose-tiny", "chunked"),
    ("goose-tiny", "recurrent"),
)
DOCUMENTS, DOCUMENT_LENGTH = 3, 3  # equal lengths: the documents alone are one batch of DOCUMENTS rows


def starts_mask() -> jax.Array:
    """``[1, DOCUMENTS * DOCUMENT_LENGTH]``: documents at t = 0 (flagged) and every DOCUMENT_LENGTH tokens."""
    return (jnp.arange(DOCUMENTS * DOCUMENT_LENGTH) % DOCUMENT_LENGTH == 0)[None]


@pytest.mark.parametrize(("preset", "wkv_impl"), CASES)
def test_packed_documents_give_the_logits_and_gradients_of_each_document_alone(preset, wkv_impl):
    small = dict(n_layer=1, n_embd=32, vocab_size=32, wkv_impl=wkv_impl)
    model = randomize(get_preset(preset).build(seed=0, **small), seed=1)
    vocab = model.config.vocab_size
    tokens = random_tokens(vocab, 1, DOCUMENTS * DOCUMENT_LENGTH, seed=2)
    keys = iter(jax.random.split(jax.random.key(3), 8))
    state = jax.tree.map(lambda x: x + jax.random.normal(next(keys), x.shape), model.init_state(1))
    direction = jnp.asarray(np.random.default_rng(4).normal(size=(1, tokens.shape[1], vocab)), jnp.float32)
    graphdef, params = nnx.split(model)

    def packed(params, state):
        logits, _ = nnx.merge(graphdef, params)(tokens, state, starts=starts_mask())
        return jnp.sum(logits * direction), logits

    def alone(params, state):
        each_from_state = jax.tree.map(lambda x: jnp.repeat(x, DOCUMENTS, axis=0), state)
        logits, _ = nnx.merge(graphdef, params)(tokens.reshape(DOCUMENTS, DOCUMENT_LENGTH), each_from_state)
        logits = logits.reshape(1, -1, vocab)
        return jnp.sum(logits * direction), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(packed, argnums=(0, 1), has_aux=True))(params, state)
    (_, expected), expected_grads = jax.jit(jax.value_and_grad(alone, argnums=(0, 1), has_aux=True))(
        params, state
    )
    # Measured (float32, XLA:CPU): logits <= 1.7e-7, parameter and state gradients <= 3.2e-7 (RWKV-4), the
    # jitted call's logits 0 (the issue asks 1e-5).
    assert relative_error(logits, expected) < 1e-6
    want = dict(jax.tree_util.tree_leaves_with_path(expected_grads))
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        if float(jnp.linalg.norm(want[path])) == 0.0:  # parameters no path reaches (RWKV-7's block-0 v0)
            assert float(jnp.linalg.norm(grad)) == 0.0, jax.tree_util.keystr(path)
        else:
            assert relative_error(grad, want[path]) < 1.5e-6, jax.tree_util.keystr(path)  # measured 1.5e-7
    # The jitted model call (concrete parameters) takes the mask too.
    assert relative_error(model(tokens, state, starts=starts_mask())[0], expected) < 1e-6


def test_a_bad_mask_is_refused_before_any_work():
    model = get_preset("goose-tiny").build(seed=0)
    tokens = random_tokens(model.config.vocab_size, 1, 8)
    with pytest.raises(ValueError, match=r"starts must be a bool array \[B, T\] = \(1, 8\)"):
        model(tokens, starts=jnp.zeros((1, 7), bool))
