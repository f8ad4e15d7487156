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

from rwkv_jax.checkpoint.layout import CheckpointLayoutError
from rwkv_jax.checkpoint.official import load_official, save_official
from rwkv_jax.checkpoint.pth import read_pth
from rwkv_jax.models.rwkv4 import convert as convert_v4
from rwkv_jax.models.rwkv6 import convert as convert_v6
from rwkv_jax.models.rwkv7 import convert as convert_v7
from rwkv_jax.models.rwkv7.model import RWKV7
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


def test_load_then_save_gives_back_every_tensor_exactly_in_the_official_order(tiny_rwkv_dir):
    tensors = fixture_tensors(tiny_rwkv_dir)
    saved = convert_v7.to_state_dict(convert_v7.from_state_dict(tensors))
    assert list(saved) == list(tensors)  # the fixture is in RWKV-LM's order
    for name, tensor in tensors.items():
        assert saved[name].dtype == np.float32 and saved[name].shape == tensor.shape, name
        np.testing.assert_array_equal(saved[name], tensor, err_msg=name)


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
    extra = {**tensors, "blocks.0.att.v0": np.zeros((1, 1, 64), np.float32)}  # block 0 has none
    with pytest.raises(CheckpointLayoutError, match=r"unexpected 1 key\(s\): blocks.0.att.v0"):
        convert_v7.from_state_dict(extra)
    misshapen = {**tensors, "blocks.5.att.r_k": np.zeros((2, 32), np.float32)}
    with pytest.raises(
        CheckpointLayoutError, match=r"blocks.5.att.r_k has shape \(2, 32\), expected \(1, 64\)"
    ):
        convert_v7.from_state_dict(misshapen)


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
    assert relative_error(ours, theirs) < 1e-5
