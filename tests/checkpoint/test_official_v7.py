"""Official RWKV-7 checkpoints: the trained 7v0 tiny-rwkv fixture gives the reference logits; round trips;
BlinkDL's ``rwkv`` package runs a file we write."""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwkv_jax.checkpoint.layout import CheckpointLayoutError, block_count
from rwkv_jax.checkpoint.official import load_official, save_official
from rwkv_jax.checkpoint.pth import read_pth
from rwkv_jax.models.rwkv4 import convert as convert_v4
from rwkv_jax.models.rwkv6 import convert as convert_v6
from rwkv_jax.models.rwkv7 import convert as convert_v7
from rwkv_jax.models.rwkv7.model import RWKV7, RWKV7Config
from rwkv_jax.numerics import relative_error
from rwkv_jax.wkv.v7 import WKV7_FORMS
from tests.checkpoint.fixture_prompt import assert_prompt_gives
from tests.conftest import import_or_skip
from tests.models.test_rwkv7 import random_model, tiny_config

TAG = "7v0-834K"


def fixture_tensors(tiny_rwkv_dir) -> dict[str, np.ndarray]:
    return read_pth(tiny_rwkv_dir / f"tiny-rwkv-{TAG}.pth")


@pytest.mark.parametrize("wkv_impl", WKV7_FORMS.form_names)
def test_trained_model_reproduces_reference_logits_one_byte_at_a_time_and_as_a_sequence(
    tiny_rwkv_dir, wkv_impl
):
    model = load_official(tiny_rwkv_dir / f"tiny-rwkv-{TAG}.pth", wkv_impl=wkv_impl)
    assert isinstance(model, RWKV7)
    expected = np.load(tiny_rwkv_dir / f"expected-logits-{TAG}.npy")
    assert_prompt_gives(model, expected)


def test_sizes_are_inferred_from_the_tensors(tiny_rwkv_dir):
    config = convert_v7.config_from_state_dict(fixture_tensors(tiny_rwkv_dir))
    assert (config.n_layer, config.n_embd, config.vocab_size, config.ffn_dim) == (12, 64, 256, 256)
    assert (config.n_head, config.head_size) == (1, 64)
    assert (config.decay_lora, config.iclr_lora, config.value_lora, config.gate_lora) == (32, 32, 32, 32)


def with_block0_value(tensors: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """``tensors`` (without block 0's value residual) with random ``blocks.0.att.v0, v1, v2`` added where
    RWKV-LM's trainer writes them (shapes of block 1's), in the official order."""
    rng = np.random.default_rng(seed)
    extra = {
        name: rng.standard_normal(tensors[name.replace(".0.", ".1.")].shape).astype(np.float32)
        for name in convert_v7.BLOCK0_VALUE
    }
    both = tensors | extra
    return {name: both[name] for name in convert_v7.official_names(block_count(tensors))}


def test_load_then_save_gives_back_every_tensor_exactly_with_block0_value_residual_added(tiny_rwkv_dir):
    tensors = fixture_tensors(tiny_rwkv_dir)  # a file without block 0's v0, v1, v2
    saved = convert_v7.to_state_dict(convert_v7.from_state_dict(tensors))
    assert [name for name in saved if name not in convert_v7.BLOCK0_VALUE] == list(tensors)
    for name, tensor in tensors.items():
        assert saved[name].dtype == np.float32 and saved[name].shape == tensor.shape, name
        np.testing.assert_array_equal(saved[name], tensor, err_msg=name)
    for name in convert_v7.BLOCK0_VALUE:  # never read; zeros where the file had none
        assert saved[name].shape == saved[name.replace(".0.", ".1.")].shape and not saved[name].any(), name


def test_a_file_with_block0_value_residual_loads_to_the_same_logits_and_round_trips_bit_exactly(
    tiny_rwkv_dir,
):
    tensors = fixture_tensors(tiny_rwkv_dir)
    trainer_layout = with_block0_value(tensors)
    model = convert_v7.from_state_dict(trainer_layout, wkv_impl="recurrent")
    saved = convert_v7.to_state_dict(model)
    assert list(saved) == list(trainer_layout)
    for name, tensor in trainer_layout.items():
        np.testing.assert_array_equal(saved[name], tensor, err_msg=name)
    tokens = jnp.arange(12, dtype=jnp.int32)[None] * 7 % 256
    without = convert_v7.from_state_dict(tensors, wkv_impl="recurrent")
    np.testing.assert_array_equal(np.asarray(model(tokens)[0]), np.asarray(without(tokens)[0]))


def test_generic_save_official_round_trips_a_fresh_model(tmp_path):
    model = random_model(tiny_config())
    save_official(model, tmp_path / "tiny-goose.pth")
    loaded = load_official(tmp_path / "tiny-goose.pth", wkv_impl="recurrent")
    assert loaded.config == model.config
    ours, theirs = nnx.state(model, nnx.Param), nnx.state(loaded, nnx.Param)
    for (path, a), (_, b) in zip(nnx.to_flat_state(ours), nnx.to_flat_state(theirs), strict=True):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))


def test_detection_tells_rwkv7_from_the_other_families(tiny_rwkv_dir):
    keys = list(fixture_tensors(tiny_rwkv_dir))
    assert convert_v7.matches(keys) and not convert_v6.matches(keys) and not convert_v4.matches(keys)
    for other in ("4v0-660K", "5v2-730K", "6v0-3m-Q5_1dq"):
        assert not convert_v7.matches(list(read_pth(tiny_rwkv_dir / f"tiny-rwkv-{other}.pth")))


def test_missing_or_misshapen_tensors_are_named_before_anything_is_built(tiny_rwkv_dir):
    tensors = fixture_tensors(tiny_rwkv_dir)
    without = {k: v for k, v in tensors.items() if k != "blocks.3.att.v2"}
    with pytest.raises(CheckpointLayoutError, match=r"missing 1 key\(s\): blocks.3.att.v2"):
        convert_v7.from_state_dict(without)
    partial = {**tensors, "blocks.0.att.v0": np.zeros((1, 1, 64), np.float32)}  # v1, v2 then due too
    with pytest.raises(CheckpointLayoutError, match=r"missing 2 key\(s\): blocks.0.att.v1, blocks.0.att.v2"):
        convert_v7.from_state_dict(partial)
    misshapen = {**tensors, "blocks.5.att.r_k": np.zeros((2, 32), np.float32)}
    with pytest.raises(
        CheckpointLayoutError, match=r"blocks.5.att.r_k has shape \(2, 32\), expected \(1, 64\)"
    ):
        convert_v7.from_state_dict(misshapen)


def rwkv_lm_block(i: int) -> dict[str, tuple[int, ...]]:
    """Block ``i``'s tensors as RWKV-LM registers them (``RWKV-v7/train_temp/src/model.py`` at commit
    118e451: ``Block.__init__`` ln1, ln2, then ln0 in block 0, att, ffn; ``RWKV_Tmix_x070.__init__`` x_r..x_g,
    w1 w2 w0, a1 a2 a0, v1 v2 v0, g1 g2, k_k k_a r_k, receptance/key/value/output, ln_x, in every block;
    ``RWKV_CMix_x070`` x_k, key, value), for C = 64, one head of 64, F = 4 C and every LoRA rank
    ``max(32, round(f sqrt(64) / 32) * 32) = 32``."""
    C, D, F = 64, 32, 256
    norm = {"weight": (C,), "bias": (C,)}
    block = {f"ln1.{p}": s for p, s in norm.items()} | {f"ln2.{p}": s for p, s in norm.items()}
    block |= {f"ln0.{p}": s for p, s in norm.items()} if i == 0 else {}
    block |= {f"att.x_{m}": (1, 1, C) for m in "rwkvag"}
    for lora in "wavg":
        block |= {f"att.{lora}1": (C, D), f"att.{lora}2": (D, C)}
        block |= {} if lora == "g" else {f"att.{lora}0": (1, 1, C)}
    block |= {"att.k_k": (1, 1, C), "att.k_a": (1, 1, C), "att.r_k": (1, 64)}
    block |= {f"att.{m}.weight": (C, C) for m in ("receptance", "key", "value", "output")}
    block |= {"att.ln_x.weight": (C,), "att.ln_x.bias": (C,)}
    block |= {"ffn.x_k": (1, 1, C), "ffn.key.weight": (F, C), "ffn.value.weight": (C, F)}
    return {f"blocks.{i}.{name}": shape for name, shape in block.items()}


def test_saved_file_has_exactly_the_tensors_and_shapes_of_rwkv_lm_trainer_modules(tmp_path):
    model = RWKV7(RWKV7Config(vocab_size=256, n_layer=2, n_embd=64, head_size=64), rngs=nnx.Rngs(0))
    save_official(model, tmp_path / "tiny-goose.pth")
    saved = {name: tuple(t.shape) for name, t in read_pth(tmp_path / "tiny-goose.pth").items()}
    top = {"emb.weight": (256, 64), "ln_out.weight": (64,), "ln_out.bias": (64,), "head.weight": (256, 64)}
    assert saved == top | rwkv_lm_block(0) | rwkv_lm_block(
        1
    )  # the order differs (ln0 first): torch ignores it


# BlinkDL's package chooses RWKV-7 when it is imported with RWKV_V7_ON=1, so it runs in its own process.
BLINKDL = """
import json, sys
from rwkv.model import RWKV
path, tokens = sys.argv[1], json.loads(sys.argv[2])
logits, _ = RWKV(path, strategy="cpu fp32").forward(tokens, None)
print(json.dumps(logits.float().tolist()))
"""


def test_blinkdl_rwkv_package_runs_our_saved_file_to_the_same_logits(tmp_path):
    import_or_skip("rwkv.model", "BlinkDL's rwkv package is not installed (pip install rwkv)")
    model = random_model(tiny_config(head_size=16, n_embd=32))
    path = tmp_path / "tiny-goose.pth"
    save_official(model, path)
    tokens = [3, 17, 42, 5, 63]
    env = {**os.environ, "RWKV_V7_ON": "1", "RWKV_JIT_ON": "0", "RWKV_CUDA_ON": "0"}
    done = subprocess.run(
        [sys.executable, "-c", BLINKDL, str(path.with_suffix("")), json.dumps(tokens)],
        capture_output=True, text=True, env=env, cwd=pathlib.Path(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.array(json.loads(done.stdout.strip().splitlines()[-1]), np.float64)
    ours = np.asarray(model(jnp.array([tokens], jnp.int32))[0][0, -1], np.float64)
    assert relative_error(ours, theirs) < 3e-6  # measured 3.8e-7 (2026-12)
