"""RWKV-4 official checkpoints: trained tiny model's logits, exact round trips, BlinkDL's package, errors."""

import pathlib
import runpy

import jax
import numpy as np
import pytest
from flax import nnx

from rwkv_jax.checkpoint.layout import CheckpointLayoutError
from rwkv_jax.checkpoint.official import detect, load_official, save_official
from rwkv_jax.checkpoint.pth import PthFormatError, read_pth, write_pth
from rwkv_jax.models.rwkv4 import convert as convert_v4
from rwkv_jax.models.rwkv4.model import RWKV4
from rwkv_jax.numerics import relative_error
from rwkv_jax.wkv.v4 import WKV4_FORMS
from tests.checkpoint.fixture_prompt import assert_prompt_gives
from tests.models.contract import jitted

MODEL_FILE = "tiny-rwkv-4v0-660K.pth"
PROMPT = [34, 105, 110]  # the bytes of '"in'


@pytest.fixture(scope="module")
def checkpoint(tiny_rwkv_dir):
    return tiny_rwkv_dir / MODEL_FILE


@pytest.fixture(scope="module")
def expected_logits(tiny_rwkv_dir):
    return np.load(tiny_rwkv_dir / "expected-logits-4v0-660K.npy")


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_official(checkpoint)


def test_detects_rwkv4_with_the_fixture_sizes(checkpoint, model):
    assert detect(list(read_pth(checkpoint))).converter is convert_v4
    config = model.config
    assert (config.vocab_size, config.n_embd, config.n_layer, config.ffn_dim) == (256, 128, 4, 256)
    assert isinstance(model, RWKV4)


@pytest.mark.parametrize("form", WKV4_FORMS.form_names)
def test_trained_model_reproduces_reference_logits_one_byte_at_a_time_and_as_a_sequence(
    checkpoint, expected_logits, form
):
    assert_prompt_gives(jitted(load_official(checkpoint, wkv_impl=form)), expected_logits)


def test_bfloat16_compute_stays_close_to_reference(checkpoint, expected_logits):
    logits, _ = jitted(load_official(checkpoint, dtype="bfloat16"))([PROMPT])
    last = np.asarray(logits[0, -1], np.float64)
    assert relative_error(last, expected_logits) < 3e-2  # measured 3.4e-3


def test_save_then_load_is_exact_and_keeps_the_official_layout(checkpoint, model, tmp_path):
    path = tmp_path / "saved.pth"
    save_official(model, path)
    original, saved = read_pth(checkpoint), read_pth(path)
    assert list(saved) == list(original)
    for name, tensor in original.items():
        assert saved[name].dtype == np.float32 and saved[name].shape == tensor.shape, name
        np.testing.assert_array_equal(saved[name], tensor, err_msg=name)
    reloaded = load_official(path)
    for a, b in zip(jax.tree.leaves(nnx.state(reloaded)), jax.tree.leaves(nnx.state(model)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_blinkdl_rwkv_package_loads_saved_file_and_agrees(model, tmp_path, blinkdl_rwkv_model):
    path = tmp_path / "saved.pth"
    save_official(model, path)
    reference = blinkdl_rwkv_model.RWKV(str(path), strategy="cpu fp32", verbose=False)
    expected, _ = reference.forward(PROMPT, None)
    logits, _ = jitted(model)([PROMPT])
    assert np.abs(np.asarray(logits[0, -1]) - expected.numpy()).max() <= 1e-4


def write_modified(checkpoint, tmp_path, change) -> str:
    tensors = dict(read_pth(checkpoint, mmap=False))
    change(tensors)
    path = tmp_path / "modified.pth"
    write_pth(path, tensors)
    return path


def test_missing_block_tensor_is_named(checkpoint, tmp_path):
    path = write_modified(checkpoint, tmp_path, lambda t: t.pop("blocks.2.att.key.weight"))
    with pytest.raises(CheckpointLayoutError, match=r"RWKV-4 .*missing 1 key\(s\): blocks.2.att.key.weight$"):
        load_official(path)


def test_missing_signature_tensor_reports_the_closest_layout(checkpoint, tmp_path):
    path = write_modified(checkpoint, tmp_path, lambda t: t.pop("blocks.0.att.time_first"))
    with pytest.raises(
        CheckpointLayoutError, match=r"unknown checkpoint layout .*closest is RWKV-4: missing 1 key\(s\): "
    ):
        load_official(path)


def test_unexpected_tensor_is_named(checkpoint, tmp_path):
    path = write_modified(
        checkpoint, tmp_path, lambda t: t.update({"blocks.1.att.extra": np.zeros(3, np.float32)})
    )
    with pytest.raises(CheckpointLayoutError, match=r"unexpected 1 key\(s\): blocks.1.att.extra"):
        load_official(path)


def test_wrong_shape_names_the_tensor_and_both_shapes(checkpoint, tmp_path):
    def shrink(tensors):
        tensors["blocks.3.att.key.weight"] = tensors["blocks.3.att.key.weight"][:, :64].copy()

    path = write_modified(checkpoint, tmp_path, shrink)
    with pytest.raises(
        CheckpointLayoutError, match=r"blocks.3.att.key.weight has shape \(128, 64\), expected \(128, 128\)"
    ):
        load_official(path)


def test_integer_tensor_is_rejected(checkpoint, tmp_path):
    path = write_modified(checkpoint, tmp_path, lambda t: t.update({"ln_out.bias": np.zeros(128, np.int32)}))
    with pytest.raises(CheckpointLayoutError, match=r"ln_out\.bias has dtype int32, expected floating point"):
        load_official(path)


def test_truncated_file_raises_format_error(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PthFormatError):
        load_official(path)


def test_saving_an_unknown_model_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="Linear belongs to no registered family"):
        save_official(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), tmp_path / "x.pth")
    assert not list(tmp_path.iterdir())


def test_convert_cli_checks_and_round_trips(checkpoint, tmp_path, capsys):
    script = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "convert.py"
    convert = runpy.run_path(str(script), run_name="convert_cli")
    assert convert["main"]([str(checkpoint), "--check", "--roundtrip", str(tmp_path / "out.pth")]) == 0
    printed = capsys.readouterr().out
    for line in ("family: rwkv4 (RWKV-4)", "parameters: 661,504", "78 tensors, all equal"):
        assert line in printed
    assert convert["main"]([str(tmp_path / "absent.pth"), "--check"]) == 2
    assert "absent.pth" in capsys.readouterr().err


def test_bfloat16_parameters_keep_their_dtype_when_asked(checkpoint):
    tensors = read_pth(checkpoint)
    model = convert_v4.from_state_dict(tensors, param_dtype="bfloat16")
    kept = convert_v4.to_state_dict(model, dtype=None)
    assert {t.dtype.name for t in kept.values()} == {"bfloat16"}
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(kept[name], tensor.astype(kept[name].dtype), err_msg=name)
