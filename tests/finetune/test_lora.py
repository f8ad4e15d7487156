"""LoRA and PiSSA adapters (rwkv_jax.finetune.lora) on every family's tiny model.

Floats are compared by relative error over the tensor (float32 models, XLA:CPU); each bound is about 10x the
largest error measured over the families (2026-12), given beside it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rwkv_jax.checkpoint.official import save_official
from rwkv_jax.finetune.lora import (
    LoRAConfig,
    LoRAParam,
    adapter_config,
    adapter_targets,
    add_adapters,
    load_adapters,
    merge_adapters,
    save_adapters,
)
from rwkv_jax.numerics import relative_error
from rwkv_jax.presets import get_preset
from tests.models.contract import random_tokens

FAMILIES = ["rwkv4-tiny", "eagle-tiny", "finch-tiny", "goose-tiny"]
TOKENS = random_tokens(256, batch=2, steps=7)


def base_model(preset: str, **overrides) -> nnx.Module:
    """The tiny model under the plain init (every matrix nonzero, unlike the official init; and cheaper)."""
    return get_preset(preset).build(init="plain", **{"wkv_impl": "recurrent", **overrides})


def every_layer(model: nnx.Module, rank: int = 4, init: str = "lora") -> LoRAConfig:
    return LoRAConfig(adapter_targets(model), rank=rank, alpha=2.0 * rank, init=init)


def trained(model: nnx.Module, seed: int = 1) -> nnx.Module:
    """``model`` with every adapter matrix set to noise, as after training (LoRA's ``b`` starts at 0)."""
    rng = np.random.default_rng(seed)
    adapters = nnx.state(model, LoRAParam)
    nnx.update(model, jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 0.1, p.shape), p.dtype), adapters))
    return model


def flat_values(model: nnx.Module) -> dict[tuple, np.ndarray]:
    """Every variable of ``model`` (parameters, adapters, PiSSA's initial values) by path."""
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model))}


@pytest.fixture(scope="module", params=FAMILIES)
def logits(request) -> dict[str, jax.Array]:
    """Per family: the base model's logits, PiSSA's initial ones, and a trained LoRA's before and after
    merging (one model of each kind, so each compiles once)."""
    base = base_model(request.param)
    out = {"base": base(TOKENS)[0]}
    out["pissa"] = add_adapters(nnx.clone(base), every_layer(base, init="pissa"))(TOKENS)[0]
    adapted = trained(add_adapters(nnx.clone(base), every_layer(base)))
    out["adapted"] = adapted(TOKENS)[0]
    out["merged"] = merge_adapters(adapted)(TOKENS)[0]
    return out


def test_merged_adapters_give_the_adapted_logits(logits):
    assert relative_error(logits["adapted"], logits["base"]) > 0.1  # the adapters do change the model
    # the issue asks 1e-5; measured <= 2.2e-7 over the four families
    assert relative_error(logits["merged"], logits["adapted"]) < 2e-6


def test_pissa_starts_as_the_base_model(logits):
    assert relative_error(logits["pissa"], logits["base"]) < 2e-6  # measured <= 2.1e-7


def test_pissa_kernel_keeps_the_residual_of_the_top_singular_directions():
    base = base_model("finch-tiny")
    kernel = np.asarray(base.blocks[1].att.key.kernel[...], np.float64)
    layer = add_adapters(base, LoRAConfig(("att.key",), rank=4, alpha=2.0, init="pissa")).blocks[1].att.key
    a, b = np.asarray(layer.lora_a[...], np.float64), np.asarray(layer.lora_b[...], np.float64)
    singular = np.linalg.svd(kernel, compute_uv=False)
    top = np.linalg.svd(0.5 * a @ b, compute_uv=False)  # scale * a @ b: the top 4 directions
    assert relative_error(top[:4], singular[:4]) < 4e-6  # measured 4.2e-7
    residual = np.linalg.svd(np.asarray(layer.kernel[...], np.float64), compute_uv=False)
    assert relative_error(residual[: len(singular) - 4], singular[4:]) < 4e-8  # measured 4.3e-9


def test_training_changes_only_the_adapters():
    model = add_adapters(base_model("goose-tiny"), every_layer(base_model("goose-tiny"), init="lora"))
    before = flat_values(model)
    graphdef, adapters, frozen = nnx.split(model, LoRAParam, ...)
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(adapters, opt_state):
        def loss(adapters):
            logits, _ = nnx.merge(graphdef, adapters, frozen)(TOKENS[:, :-1])
            log_probs = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(log_probs, TOKENS[:, 1:, None], axis=-1))

        grads = jax.grad(loss)(adapters)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(adapters, updates), opt_state

    opt_state = optimizer.init(adapters)
    for _ in range(3):
        adapters, opt_state = step(adapters, opt_state)
    nnx.update(model, adapters)
    after = flat_values(model)
    adapter_paths = {path for path, _ in nnx.to_flat_state(adapters)}
    assert len(adapter_paths) == 2 * (2 * 6 + 1)  # a and b of 6 layers in each of 2 blocks, and the head's
    for path, value in before.items():
        if path in adapter_paths:
            assert not np.array_equal(after[path], value), f"adapter {path} was not trained"
        else:
            np.testing.assert_array_equal(after[path], value, err_msg=f"frozen {path} changed")


@pytest.mark.parametrize("init", ["lora", "pissa"])
@pytest.mark.parametrize("preset", FAMILIES)
def test_saved_adapters_load_back_bit_for_bit_onto_the_base(tmp_path, preset, init):
    base = base_model(preset)
    targets = ("att.key", "att.output", "ffn.value", "head")
    model = trained(add_adapters(nnx.clone(base), LoRAConfig(targets, rank=3, alpha=5.0, init=init)))
    save_adapters(model, tmp_path / "adapters.safetensors")
    loaded = load_adapters(base, tmp_path / "adapters.safetensors")
    assert adapter_config(loaded) == adapter_config(model) == LoRAConfig(targets, 3, 5.0, init)
    ours, theirs = flat_values(model), flat_values(loaded)
    assert ours.keys() == theirs.keys()
    for path, value in ours.items():
        np.testing.assert_array_equal(theirs[path], value, err_msg=str(path))


def test_merged_finch_runs_in_blinkdl_rwkv_package_to_the_adapted_logits(tmp_path, blinkdl_rwkv_model):
    model = trained(add_adapters(base_model("finch-tiny"), every_layer(base_model("finch-tiny"), 4, "pissa")))
    tokens = [3, 17, 42, 5, 63]
    adapted, _ = model(jnp.array([tokens], jnp.int32))
    save_official(merge_adapters(model), tmp_path / "merged.pth")
    theirs, _ = blinkdl_rwkv_model.RWKV(str(tmp_path / "merged.pth"), strategy="cpu fp32").forward(
        tokens, None
    )
    # measured 1.4e-7 and 1.5e-7 (the base model alone: 1.5e-7)
    assert relative_error(np.asarray(adapted[0, -1]), theirs.numpy().astype(np.float64)) < 1.4e-6


def test_bfloat16_base_keeps_its_weights_and_computes_with_float32_adapters():
    base = base_model("finch-tiny", dtype="bfloat16")
    expected = base(TOKENS)[0]
    model = add_adapters(nnx.clone(base), every_layer(base, init="pissa"))
    layer = model.blocks[0].ffn.key
    assert layer.kernel.dtype == jnp.bfloat16 and layer.lora_a.dtype == layer.lora_b.dtype == jnp.float32
    # The residual is rounded to bfloat16: measured 1.5e-3 (bfloat16 against float32 compute: 3.9e-3).
    assert relative_error(model(TOKENS)[0], expected) < 1.5e-2


def test_unknown_target_is_named_with_the_valid_ones_before_any_change():
    model = base_model("goose-tiny")
    before = flat_values(model)
    with pytest.raises(ValueError, match=r"'ffn\.receptance'.*valid targets: att\.key, att\.output"):
        add_adapters(model, LoRAConfig(("att.key", "ffn.receptance"), rank=2, alpha=2.0))
    with pytest.raises(ValueError, match=r"rank 65 exceeds min\(in, out\) = 64 of blocks\.0\.att\.key"):
        add_adapters(model, LoRAConfig(("att.key",), rank=65, alpha=2.0))
    assert flat_values(model).keys() == before.keys()
    add_adapters(model, LoRAConfig(("att.key",), rank=2, alpha=2.0))
    with pytest.raises(ValueError, match=r"blocks\.0\.att\.key has an adapter already"):
        add_adapters(model, LoRAConfig(("att.key",), rank=2, alpha=2.0))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(targets=(), rank=2, alpha=1.0), r"targets must be a non-empty tuple"),
        (dict(targets=("head", "head"), rank=2, alpha=1.0), r"names \['head'\] more than once"),
        (dict(targets=("head",), rank=0, alpha=1.0), r"rank must be a positive integer"),
        (dict(targets=("head",), rank=2, alpha=0.0), r"alpha must be a number > 0"),
        (dict(targets=("head",), rank=2, alpha=1.0, init="dora"), r"init must be one of \('lora', 'pissa'\)"),
    ],
)
def test_bad_config_values_are_clear_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**fields)


def test_adapters_of_another_family_or_none_at_all_are_refused(tmp_path):
    finch = add_adapters(base_model("finch-tiny"), LoRAConfig(("head",), rank=2, alpha=2.0))
    save_adapters(finch, tmp_path / "finch.safetensors")
    with pytest.raises(ValueError, match=r"adapters of a rwkv6 model, not of rwkv7"):
        load_adapters(base_model("goose-tiny"), tmp_path / "finch.safetensors")
    with pytest.raises(ValueError, match=r"has no adapters"):
        merge_adapters(base_model("goose-tiny"))


def test_official_file_of_an_unmerged_model_is_refused(tmp_path):
    model = add_adapters(base_model("rwkv4-tiny"), LoRAConfig(("ffn.key",), rank=2, alpha=2.0))
    with pytest.raises(ValueError, match=r"no place for the parameters \['blocks\.0\.ffn\.key\.lora_a'"):
        save_official(model, tmp_path / "unmerged.pth")
    assert not (tmp_path / "unmerged.pth").exists()
