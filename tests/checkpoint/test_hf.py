"""Hugging Face-format RWKV-7 folders (flash-linear-attention's layout) and BlinkDL-named safetensors files:
the same weights as a .pth give the same logits, round trips are exact, the layout fla's converter writes
loads, fla's own model (with its torch reference ops) runs a folder we write to our logits."""

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwkv_jax.checkpoint.hf import read_hf_tensors, save_hf
from rwkv_jax.checkpoint.layout import CheckpointLayoutError
from rwkv_jax.checkpoint.official import load_official, read_official, save_official
from rwkv_jax.checkpoint.pth import read_pth, write_pth
from rwkv_jax.checkpoint.safetensors_io import SafetensorsFormatError, read_safetensors, write_safetensors
from rwkv_jax.models.rwkv7 import convert as convert_v7
from rwkv_jax.numerics import relative_error
from rwkv_jax.presets import get_preset
from tests.conftest import import_or_skip
from tests.models.test_rwkv7 import random_model, tiny_config

TAG = "7v0-834K"
TOKENS = jnp.array([[34, 105, 110, 32, 116, 104, 101, 32, 99, 97, 116]], jnp.int32)


def fixture_path(tiny_rwkv_dir):
    return tiny_rwkv_dir / f"tiny-rwkv-{TAG}.pth"


@pytest.fixture(scope="module")
def pth_logits(tiny_rwkv_dir):
    """The trained 7v0 model's logits on TOKENS, loaded from its .pth."""
    return logits(load_official(fixture_path(tiny_rwkv_dir)))


def two_head_model():
    """A random RWKV-7 with head size 64 (fla ties ln_x's eps to 64 * 1e-5 there, as BlinkDL's 64e-5)."""
    return random_model(tiny_config(n_embd=128, head_size=64, ffn_dim=128, vocab_size=128))


def logits(model) -> np.ndarray:
    return np.asarray(model(TOKENS)[0])


# fla's format has no place for block 0's unused v0, v1, v2: through it they come back zeros.
DROPPED_BY_HF = frozenset(tuple(name.split(".")) for name in convert_v7.BLOCK0_VALUE)


def assert_same_params(ours, theirs, skip: frozenset = frozenset()):
    """Every parameter equal, but those whose path (as strings) is in ``skip``."""
    ours, theirs = (nnx.to_flat_state(nnx.state(m, nnx.Param)) for m in (ours, theirs))
    for (path, a), (_, b) in zip(ours, theirs, strict=True):
        if tuple(map(str, path)) not in skip:
            np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), str(path))


def test_trained_model_as_pth_and_as_hf_folder_gives_identical_logits(tiny_rwkv_dir, pth_logits, tmp_path):
    from_pth = load_official(fixture_path(tiny_rwkv_dir))
    save_hf(from_pth, tmp_path / "hf")
    from_hf = load_official(tmp_path / "hf")
    assert from_hf.config == from_pth.config
    # The same float32 weights run through the same code: measured exactly equal (relative error 0.0).
    np.testing.assert_array_equal(logits(from_hf), pth_logits)


def test_pth_to_hf_to_pth_is_bit_exact_in_the_official_order(tiny_rwkv_dir, tmp_path):
    save_hf(load_official(fixture_path(tiny_rwkv_dir)), tmp_path / "hf")
    save_official(load_official(tmp_path / "hf"), tmp_path / "back.pth")
    original, back = read_pth(fixture_path(tiny_rwkv_dir)), read_pth(tmp_path / "back.pth")
    # back also holds block 0's unused v0, v1, v2 (zeros), as RWKV-LM's trainer writes every file
    assert [name for name in back if name not in convert_v7.BLOCK0_VALUE] == list(original)
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype, name
        np.testing.assert_array_equal(back[name], tensor, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_two_head_model_round_trips_through_hf_in_its_storage_dtype(tmp_path, dtype):
    model = two_head_model()
    save_hf(model, tmp_path / "hf", dtype=dtype)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["model_type"], config["num_heads"], config["head_dim"], config["torch_dtype"]) == (
        "rwkv7", 2, 64, dtype)  # fmt: skip
    loaded = load_official(tmp_path / "hf", wkv_impl="recurrent")
    if dtype == "float32":
        assert_same_params(model, loaded, skip=DROPPED_BY_HF)
    else:  # every weight is the bfloat16 rounding of ours
        rounded = {
            k: np.asarray(v, np.float32) for k, v in convert_v7.to_state_dict(model, "bfloat16").items()
        }
        for name, tensor in convert_v7.to_state_dict(loaded).items():
            if name not in convert_v7.BLOCK0_VALUE:
                np.testing.assert_array_equal(tensor, rounded[name], err_msg=name)


# ----------------------------------------------------------------------------------------------------------
# The layout fla's converter writes: flash-linear-attention utils/convert_from_rwkv7.py at commit bc3b101d
# (2026-08). translate_into_fla maps emb/ln_out/head to model.embeddings/model.norm/lm_head (emb_head, line
# 73), blocks.N to model.layers.N and att/ffn/ln0/ln1/ln2 to attn/ffn/pre_norm/attn_norm/ffn_norm (line 94),
# receptance/key/value/ln_x/output of att to r_proj/k_proj/v_proj/g_norm/o_proj (proj, line 79), and
# [wvag][012] (line 101) to {typ}_lora.lora.{2.bias, 0.weight, 2.weight} for 0/1/2, transposing 1 and 2
# (lines 108, 126); every [1, 1, C] tensor is squeezed (line 128), and copy_ (line 137) broadcasts attn.x_*
# back into fla's [1, 1, C] parameters; blocks.0.att.v0/v1/v2 are dropped (unused_names, line 64). The
# config is RWKV7Config() (line 27) with vocabulary, sizes, value_dim and LoRA ranks set from the tensors:
# head_dim stays 64 and num_heads 2048 // 64 = 32 (configuration_rwkv7.py lines 62-65: computed for the
# default hidden size) whatever the hidden size; save_pretrained (line 147) writes config.json with "dtype",
# bos 1, eos 2, and one model.safetensors. Before fla commit 6b673e6b (2025-04) the six mixes were one
# attn.x_x [6, C] filled row 'rwkvag'.find(name[-1]) (commit d303339e, lines 115-118).

_FLA_PARTS = {"emb": "model.embeddings", "ln_out": "model.norm", "head": "lm_head"}
_FLA_MODULES = {"att": "attn", "ffn": "ffn", "ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}
_FLA_PROJ = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "ln_x": "g_norm", "output": "o_proj"}
_FLA_LORA = {"0": "2.bias", "1": "0.weight", "2": "2.weight"}


def fla_converter_files(tensors: dict, fused_mixes: bool) -> tuple[dict, dict]:
    """``(config.json, {name: torch tensor})`` as fla's converter writes the BlinkDL ``tensors``."""
    torch = import_or_skip("torch", "torch is not installed")
    out = {}
    for name, array in tensors.items():
        value = torch.from_numpy(np.array(array))
        top, _, rest = name.partition(".")
        if top in _FLA_PARTS:
            out[f"{_FLA_PARTS[top]}.{rest}"] = value
            continue
        _, block, module, part = name.split(".", 3)
        if block == "0" and module == "att" and part in ("v0", "v1", "v2"):
            continue
        head, dot, tail = part.partition(".")
        if re.match("[wvag][012]", part):
            part = f"{part[0]}_lora.lora.{_FLA_LORA[part[1]]}"
            value = value.t() if name[-1] in "12" else value
        elif module == "att" and head in _FLA_PROJ:
            part = f"{_FLA_PROJ[head]}{dot}{tail}"
        value = value.squeeze() if tuple(value.shape) == (1, 1, value.shape[-1]) else value
        key = f"model.layers.{block}.{_FLA_MODULES[module]}.{part}"
        if module == "att" and re.fullmatch("x_[rwkvag]", part):
            if fused_mixes:
                fused = out.setdefault(f"model.layers.{block}.attn.x_x", torch.zeros(6, value.shape[-1]))
                fused["rwkvag".find(part[-1])] = value
                continue
            value = value.reshape(1, 1, -1)
        out[key] = value.contiguous()
    config = convert_v7.config_from_state_dict(tensors)
    hf_config = {
        "model_type": "rwkv7", "architectures": ["RWKV7ForCausalLM"], "hidden_size": config.n_embd,
        "hidden_ratio": config.ffn_dim / config.n_embd, "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layer, "head_dim": 64, "num_heads": 32, "vocab_size": config.vocab_size,
        "decay_low_rank_dim": config.decay_lora, "a_low_rank_dim": config.iclr_lora,
        "v_low_rank_dim": config.value_lora, "gate_low_rank_dim": config.gate_lora, "norm_eps": 1e-5,
        "value_dim": [config.n_embd] * config.n_layer, "attn": None, "fuse_norm": True, "norm_bias": True,
        "norm_first": True, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "sqrelu",
    }  # fmt: skip
    return hf_config, out


def write_fla_folder(folder, tensors: dict, fused_mixes: bool = False, dtype: str = "float32") -> dict:
    torch = import_or_skip("torch", "torch is not installed")
    save_file = import_or_skip("safetensors.torch", "safetensors is not installed").save_file
    hf_config, out = fla_converter_files(tensors, fused_mixes)
    folder.mkdir()
    out = {k: v.to(getattr(torch, dtype)) for k, v in out.items()}
    save_file(out, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config | {"dtype": dtype}))
    return out


@pytest.mark.parametrize("fused_mixes", [False, True], ids=["x_r..x_g", "older x_x"])
def test_the_layout_of_flas_converter_loads_to_the_pth_logits(
    tiny_rwkv_dir, pth_logits, tmp_path, fused_mixes
):
    tensors = read_pth(fixture_path(tiny_rwkv_dir))
    write_fla_folder(tmp_path / "fla", tensors, fused_mixes, dtype="float64")
    from_fla = load_official(tmp_path / "fla")
    assert (from_fla.config.n_head, from_fla.config.head_size) == (1, 64)  # num_heads 32 is fla's stale value
    # float64 storage of float32 weights converts back exactly: measured equal logits.
    np.testing.assert_array_equal(logits(from_fla), pth_logits)


def test_tied_embeddings_and_bias_free_norms_load_as_fla_builds_them(tmp_path):
    model = two_head_model()
    save_hf(model, tmp_path / "hf")
    tensors = dict(read_hf_tensors(tmp_path / "hf"))
    norm_biases = [k for k in tensors if re.search(r"(pre_norm|attn_norm|ffn_norm|model\.norm)\.bias$", k)]
    for key in ["lm_head.weight", *norm_biases]:
        del tensors[key]
    (tmp_path / "variant").mkdir()
    write_safetensors(tmp_path / "variant" / "model.safetensors", tensors)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config |= {"tie_word_embeddings": True, "norm_bias": False}
    (tmp_path / "variant" / "config.json").write_text(json.dumps(config))
    loaded = convert_v7.to_state_dict(load_official(tmp_path / "variant"))
    np.testing.assert_array_equal(loaded["head.weight"], loaded["emb.weight"])
    for name in ("blocks.0.ln0.bias", "blocks.1.ln1.bias", "blocks.2.ln2.bias", "ln_out.bias"):
        np.testing.assert_array_equal(loaded[name], 0.0, err_msg=name)
    np.testing.assert_array_equal(
        loaded["blocks.1.att.w1"], convert_v7.to_state_dict(model)["blocks.1.att.w1"]
    )


def test_sharded_safetensors_and_pytorch_bin_folders_load(tmp_path):
    model = two_head_model()
    save_hf(model, tmp_path / "hf")
    tensors, config = read_hf_tensors(tmp_path / "hf"), (tmp_path / "hf" / "config.json").read_text()
    names = list(tensors)
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    for folder in ("sharded", "bin"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(config)
    for shard, keys in shards.items():
        write_safetensors(tmp_path / "sharded" / shard, {k: tensors[k] for k in keys})
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    write_pth(tmp_path / "bin" / "pytorch_model.bin", tensors)
    for folder in ("sharded", "bin"):
        assert_same_params(model, load_official(tmp_path / folder, wkv_impl="recurrent"), DROPPED_BY_HF)


def test_missing_unexpected_and_misshapen_hf_tensors_are_named(tmp_path):
    save_hf(two_head_model(), tmp_path / "hf")
    tensors = dict(read_hf_tensors(tmp_path / "hf"))
    config = (tmp_path / "hf" / "config.json").read_text()

    def folder_with(name: str, changed: dict):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(config)
        write_safetensors(tmp_path / name / "model.safetensors", changed)
        return tmp_path / name

    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.attn.v_lora.lora.2.bias"}
    with pytest.raises(
        CheckpointLayoutError, match=r"missing 1 key\(s\): model.layers.1.attn.v_lora.lora.2.bias"
    ):
        load_official(folder_with("missing", missing))
    extra = tensors | {"model.layers.0.attn.v_lora.lora.2.bias": np.zeros(128, np.float32)}
    with pytest.raises(CheckpointLayoutError, match=r"unexpected 1 key\(s\): model.layers.0.attn.v_lora"):
        load_official(folder_with("extra", extra))
    misshapen = tensors | {"model.layers.2.attn.w_lora.lora.0.weight": np.zeros((128, 4), np.float32)}
    with pytest.raises(
        CheckpointLayoutError, match=r"w_lora.lora.0.weight has shape \(128, 4\), expected \(4, 128\)"
    ):
        load_official(folder_with("misshapen", misshapen))
    with pytest.raises(CheckpointLayoutError, match="Hugging Face names: load the folder"):
        load_official(tmp_path / "hf" / "model.safetensors")


def test_a_norm_eps_other_than_fla_default_loads_into_both_norms_and_round_trips(tmp_path):
    model = random_model(
        tiny_config(
            n_embd=128, head_size=64, ffn_dim=128, vocab_size=128, layer_norm_eps=1e-3, group_norm_eps=64e-3
        )
    )
    save_hf(model, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["norm_eps"] == 1e-3
    back = load_official(tmp_path / "hf", wkv_impl=model.config.wkv_impl)
    assert (back.config.layer_norm_eps, back.config.group_norm_eps) == (1e-3, 64e-3)
    np.testing.assert_array_equal(logits(back), logits(model))  # the same weights, eps and form: exact


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"model_type": "rwkv6"}, "model_type 'rwkv6' has no Hugging Face layout"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"norm_first": False}, "norm_first false"),
        ({"value_dim": 256}, "value_dim 256 differs"),
        ({"attn": {"layers": [1]}}, "hybrid attention"),
    ],
)
def test_settings_our_rwkv7_cannot_represent_are_refused_by_name(tmp_path, setting, message):
    save_hf(two_head_model(), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config | setting))
    with pytest.raises(CheckpointLayoutError, match=message):
        load_official(tmp_path / "hf")


def test_save_hf_never_overwrites_and_refuses_an_eps_the_format_cannot_hold(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        save_hf(two_head_model(), tmp_path / "taken")
    with pytest.raises(ValueError, match=r"head_dim \* norm_eps = 8 \* 1e-05"):
        save_hf(random_model(tiny_config()), tmp_path / "head8")  # head size 8 with BlinkDL's 64e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary folder left behind


@pytest.mark.parametrize("preset", ["rwkv4-tiny", "finch-tiny", "goose-tiny"])
def test_blinkdl_named_safetensors_round_trip_every_family_memory_mapped(tmp_path, preset):
    model = get_preset(preset).build(seed=0)
    save_official(model, tmp_path / "model.safetensors")
    tensors, _ = read_official(tmp_path / "model.safetensors")
    assert all(isinstance(t, np.memmap) for t in tensors.values())
    assert_same_params(model, load_official(tmp_path / "model.safetensors"))


def test_our_safetensors_read_back_in_the_reference_package_and_bad_files_are_refused(tmp_path):
    torch = import_or_skip("torch", "torch is not installed")
    safe_open = import_or_skip("safetensors", "safetensors is not installed").safe_open
    ml_dtypes = import_or_skip("ml_dtypes", "ml_dtypes is not installed")
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1.5, -2], ml_dtypes.bfloat16)}
    write_safetensors(tmp_path / "ok.safetensors", arrays)
    with safe_open(tmp_path / "ok.safetensors", "pt") as f:
        assert f.get_tensor("b").dtype == torch.bfloat16
        np.testing.assert_array_equal(f.get_tensor("w").numpy(), arrays["w"])
        np.testing.assert_array_equal(f.get_tensor("b").float().numpy(), [1.5, -2])
    good = (tmp_path / "ok.safetensors").read_bytes()
    length = int.from_bytes(good[:8], "little")
    header = json.loads(good[8 : 8 + length])
    bad_files = {
        "truncated": (good[:-4], "do not hold"),
        "header past the end": ((10**6).to_bytes(8, "little") + good[8:], "exceeds the file"),
        "unknown dtype": (json.dumps(header | {"w": header["w"] | {"dtype": "F4"}}), "dtype 'F4'"),
        "overlap": (json.dumps(header | {"b": header["b"] | {"data_offsets": [0, 4]}}), "overlap"),
    }
    for case, (content, message) in bad_files.items():
        if isinstance(content, str):
            text = content.encode() + b" " * (-len(content) % 8)
            content = len(text).to_bytes(8, "little") + text + good[8 + length :]
        (tmp_path / "bad.safetensors").write_bytes(content)
        with pytest.raises(SafetensorsFormatError, match=message):
            read_safetensors(tmp_path / "bad.safetensors")
        assert case


# ----------------------------------------------------------------------------------------------------------
# fla's RWKV7ForCausalLM on the CPU: its Triton kernels are swapped for the torch references fla ships beside
# them (token_shift_ref, torch_addcmul_rwkv7, k_update_ref, gate_output_correction_ref and the naive
# dplr_recurrence, the generalized delta rule that chunk_rwkv7 and fused_mul_recurrent_rwkv7 compute).


def _fla_reference_ops(monkeypatch):
    layers = import_or_skip("fla.layers.rwkv7", "flash-linear-attention (fla) is not installed")
    from fla.models.rwkv7 import modeling_rwkv7
    from fla.modules.token_shift import token_shift_ref
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_recurrence
    from fla.ops.rwkv7.fused_addcmul import torch_addcmul_rwkv7
    from fla.ops.rwkv7.fused_k_update import k_update_ref
    from fla.ops.rwkv7.gate_output_correction import gate_output_correction_ref

    def shift(x, cu_seqlens=None, cache=None, output_cache=False, **_):
        assert cache is None  # one call from the empty state
        return (token_shift_ref(x), x[:, -1:]) if output_cache else token_shift_ref(x)

    def delta_rule(r, w, k, v, a, b, initial_state=None, output_final_state=False, **_):
        # dplr_recurrence scales q by K ** -0.5 and wants [B, H, T, K]; chunk_rwkv7 uses scale 1.
        q, k, v, a, b, w = (x.transpose(1, 2) for x in (r * r.shape[-1] ** 0.5, k, v, a, b, w))
        o, state = dplr_recurrence(q, k, v, a, b, w, initial_state, output_final_state)
        return o.transpose(1, 2), state

    def recurrent(r, w, k, v, kk, a, **kwargs):
        return delta_rule(r, w, k, v, -kk, kk * a, **kwargs)

    for name, value in [
        ("token_shift", shift), ("fused_addcmul_rwkv7", torch_addcmul_rwkv7), ("fused_k_rwkv7", k_update_ref),
        ("gate_output_correction", gate_output_correction_ref), ("chunk_rwkv7", delta_rule),
        ("fused_mul_recurrent_rwkv7", recurrent),
    ]:  # fmt: skip
        monkeypatch.setattr(layers, name, value)
    monkeypatch.setattr(modeling_rwkv7, "token_shift", shift)
    return modeling_rwkv7.RWKV7ForCausalLM


@pytest.mark.slow
def test_flas_model_with_its_reference_ops_runs_our_hf_folder_to_our_logits(tmp_path, monkeypatch):
    torch = import_or_skip("torch", "torch is not installed")
    fla_model = _fla_reference_ops(monkeypatch)
    model = two_head_model()
    save_hf(model, tmp_path / "hf")
    # fuse_norm=False: torch's LayerNorm/GroupNorm/normalize instead of fla's Triton ones (same parameters).
    # float32: fla's naive dplr_recurrence computes in float32 whatever its inputs.
    theirs = fla_model.from_pretrained(tmp_path / "hf", fuse_norm=False, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = theirs(torch.from_numpy(np.asarray(TOKENS, np.int64))).logits.numpy()
    # float32 against float32 (random weights, 3 layers, 11 tokens): measured 7.4e-7.
    assert relative_error(logits(model), expected) < 5e-6
