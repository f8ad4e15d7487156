"""The ``config.finetune`` section: a trained fixture model state-tuned with the training step lowers the
validation loss on a new text while every weight stays bit-equal; bad combinations fail before any work."""

import jax
import numpy as np
import optax
import pytest

from rwkv_jax.finetune.training import check_finetune, finetune_model
from rwkv_jax.training.config import ConfigError, load_config
from rwkv_jax.training.model import ModelFns
from rwkv_jax.training.step import make_eval_step, make_train_step
from tests.conftest import shared_path
from tests.training.conftest import synthetic_text

FIXTURES = ("fixtures", "tiny-rwkv")
GOOSE, RWKV4 = "tiny-rwkv-7v0-834K.pth", "tiny-rwkv-4v0-660K.pth"


def finetune_config(method: str = "state", base: str = GOOSE, **fields):
    base = shared_path(*FIXTURES, base)
    config = load_config(f"configs/finetune.py:base={base},method={method},steps=8,seq_len=32,batch=4")
    for key, value in fields.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def text_batch(seed: int, batch: int = 4, length: int = 33) -> np.ndarray:
    """``[batch, length]`` byte ids of word salad (a text the fixture model was not trained on)."""
    ids = np.frombuffer(synthetic_text(seed, 400), np.uint8).astype(np.int32)
    return ids[: batch * length].reshape(batch, length)


def test_state_tuning_lowers_the_validation_loss_and_leaves_every_weight_bit_equal():
    # RWKV-4 (4 layers) compiles fastest: the test is about the training path, the same for every family.
    config = finetune_config(base=RWKV4, **{"model.wkv_impl": "recurrent", "model.dtype": "float32"})
    fns, params, frozen = ModelFns.split_trainable(*finetune_model(config))
    assert set(params) == {"tuned_state"}
    weights = jax.tree.map(np.array, frozen)
    tx = optax.adam(0.2)
    opt_state = tx.init(params)
    train_step, eval_step = jax.jit(make_train_step(fns, tx)), jax.jit(make_eval_step(fns))
    val = text_batch(99)
    before = float(eval_step(params, val, frozen).mean())
    for step in range(8):
        params, opt_state, _ = train_step(params, opt_state, text_batch(step), frozen)
    after = float(eval_step(params, val, frozen).mean())
    assert after < before - 0.005, (before, after)  # measured 2.532 -> 2.522 nats/byte
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(weights), strict=True)
    )


def test_frozen_weights_stay_in_the_compute_dtype_and_get_no_optimiser_state():
    config = finetune_config()  # bfloat16 compute, as configs/finetune.py
    _, params, frozen = ModelFns.split_trainable(*finetune_model(config))
    assert {np.dtype(x.dtype).name for x in jax.tree.leaves(frozen)} == {"bfloat16", "float32"}
    sizes = [x.size for x in jax.tree.leaves(optax.adam(1e-2).init(params)) if np.ndim(x)]
    assert sum(sizes) == 2 * sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"finetune.method": "qlora"}, "finetune.method = 'qlora': expected one of"),
        ({"finetune.base": ""}, "finetune.base = '': expected an official checkpoint"),
        ({"finetune.base": "/nonexistent.pth"}, "an existing .pth"),
        ({"model.family": "rwkv6"}, "a rwkv6 checkpoint .* it is rwkv7"),
        ({"model.n_layer": 3}, "config.model.n_layer = 3 as in the base, which has 12"),
        ({"finetune.method": "lora", "finetune.lora_targets": "att.gate"}, "lora_targets = 'att.gate'"),
    ],
)
def test_bad_combinations_are_clear_errors_before_any_work(fields, message):
    config = finetune_config()
    with config.unlocked():
        for key, value in fields.items():
            section, name = key.split(".")
            config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        check_finetune(config)
