"""The models with ``wkv_impl="pallas"`` (interpret mode on CPU) against the same models on pure-JAX forms:
logits and the gradients of a training loss, and official checkpoints loaded with the kernel form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rwkv_jax import RWKV4, RWKV6, RWKV7, Impl, RWKV4Config, load_official
from rwkv_jax.models.common import with_config
from rwkv_jax.numerics import relative_error  # NaN/Inf give NaN/Inf: every bound fails
from tests.checkpoint.fixture_prompt import FLOAT32_BOUND
from tests.models.test_rwkv4 import randomize as randomize_rwkv4
from tests.models.test_rwkv6 import randomize as randomize_rwkv6
from tests.models.test_rwkv6 import tiny_config as tiny_rwkv6_config
from tests.models.test_rwkv7 import random_model as random_rwkv7
from tests.models.test_rwkv7 import tiny_config as tiny_rwkv7_config

PROMPT = np.array([[34, 105, 110]], np.int32)


def loss_and_grads(model: nnx.Module, tokens: jax.Array):
    def loss_fn(m):
        logits, _ = m(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean(), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return loss, logits, grads


def tiny_rwkv4() -> RWKV4:
    config = RWKV4Config(vocab_size=64, n_layer=2, n_embd=32, ffn_dim=64, wkv_impl="recurrent")
    return randomize_rwkv4(RWKV4(config, rngs=nnx.Rngs(0)), 3)


def tiny_finch() -> RWKV6:
    config = tiny_rwkv6_config("6", n_embd=32, head_size=16, wkv_impl="chunked", chunk_size=16)
    return randomize_rwkv6(RWKV6(config, rngs=nnx.Rngs(0)), 4)


def tiny_goose() -> RWKV7:
    return random_rwkv7(tiny_rwkv7_config(n_layer=2, wkv_impl="chunked", chunk_size=16), 5)


@pytest.mark.slow
@pytest.mark.parametrize("build", [tiny_rwkv4, tiny_finch, tiny_goose], ids=["rwkv4", "finch", "goose"])
def test_pallas_form_matches_pure_jax_form_in_logits_and_training_gradients(build):
    model = build()
    tokens = jax.random.randint(jax.random.key(7), (2, 21), 0, model.config.vocab_size, jnp.int32)
    loss, logits, grads = loss_and_grads(model, tokens)
    kernel_model = with_config(model, wkv_impl="pallas")
    assert [block.att.wkv_impl for block in kernel_model.blocks] == [Impl.PALLAS] * model.config.n_layer
    kernel_loss, kernel_logits, kernel_grads = loss_and_grads(kernel_model, tokens)
    assert relative_error(kernel_logits, logits) <= 3e-6  # measured 3.4e-7 (2026-12, worst family)
    assert relative_error(kernel_loss, loss) <= 1e-6  # measured 1.1e-7 (2026-12, worst family)
    flat, kernel_flat = nnx.to_flat_state(grads), nnx.to_flat_state(kernel_grads)
    for (path, grad), (_, kernel_grad) in zip(flat, kernel_flat, strict=True):
        reference = np.asarray(grad.get_value())
        if np.linalg.norm(reference) < 1e-30:
            continue  # a parameter the loss does not reach at this size
        assert relative_error(kernel_grad.get_value(), reference) <= 4e-5, path  # measured 4.4e-6


@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [("tiny-rwkv-4v0-660K.pth", "expected-logits-4v0-660K.npy")],
)
def test_official_checkpoint_loads_with_the_kernel_form(tiny_rwkv_dir, checkpoint, expected):
    model = load_official(tiny_rwkv_dir / checkpoint, wkv_impl="pallas")
    assert model.blocks[0].att.wkv_impl is Impl.PALLAS
    logits, _ = model(jnp.asarray(PROMPT))
    # The fixture README's check is 1e-4 max abs; here relative over the logits, as every parity test.
    assert relative_error(logits[0, -1], np.load(tiny_rwkv_dir / expected)) <= FLOAT32_BOUND
