"""Official Eagle / Finch checkpoints: the trained tiny-rwkv fixtures give the reference logits; round trips.

The fixtures (../shared/fixtures/tiny-rwkv, see its README) are byte-level models with the logits that the
prompt ``"in`` (bytes 34 105 110) must produce after its third byte, from the zero state. RWKV-5's ``ln_x``
eps differs between implementations: BlinkDL's ``rwkv`` package uses 64e-5 (``rwkv-pip-logits-*``), rwkv.cpp
1e-5 (``expected-logits-*``); we check both with the loader's ``group_norm_eps``.
"""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from rwkv_jax.checkpoint.layout import CheckpointLayoutError
from rwkv_jax.checkpoint.official import load_official, save_official
from rwkv_jax.checkpoint.pth import read_pth, write_pth
from rwkv_jax.models.rwkv6 import convert as convert_v6
from rwkv_jax.models.rwkv6.model import RWKV6
from rwkv_jax.numerics import relative_error
from rwkv_jax.wkv.v6 import WKV6_FORMS
from tests.checkpoint.fixture_prompt import assert_prompt_gives
from tests.models.test_rwkv6 import randomize, tiny_config

# (tag, version, reference file, ln_x eps, the other RWKV-5 reference, which that eps must miss)
CASES = [
    ("6v0-3m-Q5_1dq", "6", "expected-logits-6v0-3m-Q5_1dq.npy", 64e-5, None),
    ("5v2-730K", "5.2", "rwkv-pip-logits-5v2-730K.npy", 64e-5, "expected-logits-5v2-730K.npy"),
    ("5v2-730K", "5.2", "expected-logits-5v2-730K.npy", 1e-5, "rwkv-pip-logits-5v2-730K.npy"),
    ("5v1-730K", "5.1", "rwkv-pip-logits-5v1-730K.npy", 64e-5, "expected-logits-5v1-730K.npy"),
    ("5v1-730K", "5.1", "expected-logits-5v1-730K.npy", 1e-5, "rwkv-pip-logits-5v1-730K.npy"),
]


def fixture_tensors(tiny_rwkv_dir, tag: str) -> dict[str, np.ndarray]:
    return read_pth(tiny_rwkv_dir / f"tiny-rwkv-{tag}.pth")


# Every WKV form on the references made with BlinkDL's eps (the default); the recurrent form on the others.
FORM_CASES = [
    (*case, form)
    for case in CASES
    for form in (WKV6_FORMS.form_names if case[3] == 64e-5 else ("recurrent",))
]


@pytest.mark.parametrize(("tag", "version", "expected_file", "eps", "other_file", "form"), FORM_CASES)
def test_trained_model_reproduces_reference_logits_one_byte_at_a_time_and_as_a_sequence(
    tiny_rwkv_dir, tag, version, expected_file, eps, other_file, form
):
    model = convert_v6.from_state_dict(fixture_tensors(tiny_rwkv_dir, tag), group_norm_eps=eps, wkv_impl=form)
    assert model.config.version == version
    expected = np.load(tiny_rwkv_dir / expected_file)
    serial = assert_prompt_gives(model, expected)
    if other_file is not None:  # the two RWKV-5 references differ by up to 1.31 (README): eps matters
        assert np.abs(serial - np.load(tiny_rwkv_dir / other_file)).max() > 0.1


@pytest.mark.parametrize(
    ("tag", "version"), [("6v0-3m-Q5_1dq", "6"), ("5v2-730K", "5.2"), ("5v1-730K", "5.1")]
)
def test_sizes_are_inferred_from_the_tensors(tiny_rwkv_dir, tag, version):
    config = convert_v6.config_from_state_dict(fixture_tensors(tiny_rwkv_dir, tag))
    n_embd, heads, ffn = (128, 16, 448) if version == "6" else (64, 8, 256)
    assert (config.version, config.n_layer, config.n_embd, config.vocab_size) == (version, 12, n_embd, 256)
    assert (config.n_head, config.head_size, config.ffn_dim, config.dim_att) == (heads, 8, ffn, n_embd)
    if version == "6":
        assert (config.time_mix_extra_dim, config.time_decay_extra_dim) == (32, 64)


@pytest.mark.parametrize("tag", ["6v0-3m-Q5_1dq", "5v2-730K", "5v1-730K"])
def test_load_then_save_gives_back_every_tensor_exactly(tiny_rwkv_dir, tag):
    tensors = fixture_tensors(tiny_rwkv_dir, tag)
    saved = convert_v6.to_state_dict(convert_v6.from_state_dict(tensors))
    assert set(saved) == set(tensors)
    for name, tensor in tensors.items():
        assert saved[name].dtype == np.float32 and saved[name].shape == tensor.shape, name
        np.testing.assert_array_equal(saved[name], tensor, err_msg=name)
    if tag.startswith("6"):  # the Finch fixture is in BlinkDL's order; RWKV-5's were written by other code
        assert list(saved) == list(tensors)
    again = convert_v6.to_state_dict(convert_v6.from_state_dict(saved))
    assert list(again) == list(saved)
    assert all(np.array_equal(again[name], saved[name]) for name in saved)


def test_bfloat16_checkpoint_round_trips_exactly_with_bfloat16_parameters(tiny_rwkv_dir):
    tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in fixture_tensors(tiny_rwkv_dir, "5v2-730K").items()}
    model = convert_v6.from_state_dict(tensors, param_dtype="bfloat16", dtype="bfloat16")
    saved = convert_v6.to_state_dict(model, dtype=None)
    for name, tensor in tensors.items():
        assert saved[name].dtype == ml_dtypes.bfloat16, name
        np.testing.assert_array_equal(saved[name].view(np.uint16), tensor.view(np.uint16), err_msg=name)


def test_generic_load_and_save_official_route_eagle_and_finch_here(tiny_rwkv_dir, tmp_path):
    for tag in ("6v0-3m-Q5_1dq", "5v2-730K"):
        model = load_official(tiny_rwkv_dir / f"tiny-rwkv-{tag}.pth", wkv_impl="recurrent")
        assert isinstance(model, RWKV6)
        save_official(model, tmp_path / f"{tag}.pth")
        saved, original = read_pth(tmp_path / f"{tag}.pth"), fixture_tensors(tiny_rwkv_dir, tag)
        assert set(saved) == set(original)
        assert all(np.array_equal(saved[name], original[name]) for name in original)


def test_detection_tells_the_versions_and_families_apart(tiny_rwkv_dir):
    for tag, version in (("6v0-3m-Q5_1dq", "6"), ("5v2-730K", "5.2"), ("5v1-730K", "5.1")):
        keys = list(fixture_tensors(tiny_rwkv_dir, tag))
        assert convert_v6.matches(keys) and convert_v6.detect_version(keys) == version
    for other in ("4v0-660K", "7v0-834K"):
        assert not convert_v6.matches(list(fixture_tensors(tiny_rwkv_dir, other)))


def test_missing_or_misshapen_tensors_are_named_before_anything_is_built(tiny_rwkv_dir):
    tensors = fixture_tensors(tiny_rwkv_dir, "6v0-3m-Q5_1dq")
    missing = {k: v for k, v in tensors.items() if k != "blocks.3.att.time_decay_w2"}
    with pytest.raises(CheckpointLayoutError, match=r"missing 1 key\(s\): blocks.3.att.time_decay_w2"):
        convert_v6.from_state_dict(missing)
    misshapen = dict(tensors, **{"blocks.2.att.time_faaaa": np.zeros((16, 4), np.float32)})
    with pytest.raises(
        CheckpointLayoutError, match=r"blocks.2.att.time_faaaa has shape \(16, 4\), expected \(16, 8\)"
    ):
        convert_v6.from_state_dict(misshapen)
    gated_5_1 = dict(
        fixture_tensors(tiny_rwkv_dir, "5v1-730K"), **{"blocks.0.att.gate.weight": np.zeros((64, 64))}
    )
    with pytest.raises(CheckpointLayoutError, match=r"preview with a gate"):
        convert_v6.from_state_dict(gated_5_1)


def test_blinkdl_rwkv_package_runs_our_saved_finch_file_to_the_same_logits(tmp_path, blinkdl_rwkv_model):
    model = randomize(RWKV6(tiny_config("6"), rngs=nnx.Rngs(0)), 0)
    path = tmp_path / "tiny-finch.pth"
    write_pth(path, convert_v6.to_state_dict(model))
    tokens = [3, 17, 42, 5, 63]
    theirs, _ = blinkdl_rwkv_model.RWKV(str(path), strategy="cpu fp32").forward(tokens, None)
    ours, _ = model(jnp.array([tokens], jnp.int32))
    theirs, ours = theirs.numpy().astype(np.float64), np.asarray(ours[0, -1], np.float64)
    assert relative_error(ours, theirs) < 4e-6  # measured 4.8e-7 (2026-12)
