"""RWKV-7 Hugging Face folders in RWKV-block's layout (the ``RWKV/v7-Goose-*-HF`` releases): a folder laid out
as RWKV-block's ``hf_builder.py`` writes it loads to the ``.pth`` logits, ours round-trip, bad ones are
refused by name."""

import json

import numpy as np
import pytest

from rwkv_jax.checkpoint.hf import read_hf_tensors, save_hf
from rwkv_jax.checkpoint.layout import CheckpointLayoutError
from rwkv_jax.checkpoint.official import load_official
from rwkv_jax.checkpoint.pth import read_pth
from rwkv_jax.checkpoint.safetensors_io import write_safetensors
from rwkv_jax.models.rwkv7 import convert as convert_v7
from tests.checkpoint.test_hf import (
    assert_same_params,
    fixture_path,
    logits,
    two_head_model,
)


def builder_config(tensors: dict) -> dict:
    """config.json as RWKV-block's ``RWKV7Config`` serialises (``hf_builder.py``: sizes read from the weights,
    the HF fields its ``__init__`` sets, the auto_map of its code files)."""
    vocab, width = tensors["emb.weight"].shape
    return {
        "architectures": ["RWKV7ForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_rwkv7.RWKV7Config",
            "AutoModelForCausalLM": "modeling_rwkv7.RWKV7ForCausalLM",
        },
        "bos_token_id": 0,
        "dropout_rate": 0.0,
        "eos_token_id": 0,
        "forward_chunk_size": 4096,
        "head_size": tensors["blocks.0.att.r_k"].shape[1],
        "hidden_size": width,
        "hidden_size_att": width,
        "hidden_size_ffn": tensors["blocks.0.ffn.key.weight"].shape[0],
        "init_wkv_state": False,
        "memory_tune_path": None,
        "model_type": "rwkv7",
        "num_hidden_layers": 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("blocks.")),
        "tie_word_embeddings": False,
        "tmix_backend": "auto",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.48.0",
        "use_bfloat16": True,
        "use_cache": True,
        "vocab_size": vocab,
    }


def write_builder_folder(folder, tensors: dict, config: dict | None = None) -> None:
    """A folder as ``hf_builder.py`` writes one: the state dict unchanged in model.safetensors."""
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", tensors, metadata={"format": "pt"})
    config = builder_config(tensors) if config is None else config
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def test_a_folder_as_rwkv_blocks_builder_writes_it_loads_to_the_pth_logits(tiny_rwkv_dir, tmp_path):
    tensors = read_pth(fixture_path(tiny_rwkv_dir))
    write_builder_folder(tmp_path / "hf", tensors)
    from_folder, from_pth = load_official(tmp_path / "hf"), load_official(fixture_path(tiny_rwkv_dir))
    assert from_folder.config == from_pth.config
    # The same float32 weights through the same code: measured exactly equal.
    np.testing.assert_array_equal(logits(from_folder), logits(from_pth))


def test_save_hf_in_rwkv_blocks_layout_writes_blinkdl_names_and_loads_back_exactly(tmp_path):
    model = two_head_model()
    save_hf(model, tmp_path / "hf", layout="rwkv-block")
    written = read_hf_tensors(tmp_path / "hf")
    official = convert_v7.to_state_dict(model)
    assert list(written) == [name for name in official if name not in convert_v7.BLOCK0_VALUE]
    for name, tensor in written.items():
        np.testing.assert_array_equal(tensor, official[name], err_msg=name)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["model_type"], config["head_size"], config["hidden_size_att"]) == ("rwkv7", 64, 128)
    back = load_official(tmp_path / "hf", wkv_impl=model.config.wkv_impl)  # the same form: exact
    assert_same_params(model, back, skip=frozenset(tuple(n.split(".")) for n in convert_v7.BLOCK0_VALUE))
    np.testing.assert_array_equal(logits(back), logits(model))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": 96}, "hidden_size 96"),
        ({"num_hidden_layers": 7}, "num_hidden_layers 7"),
        ({"head_size": 32}, "head_size 32"),
        ({"hidden_size_att": 64}, "hidden_size_att 64"),
    ],
)
def test_a_config_that_disagrees_with_the_tensors_is_refused_by_field(tmp_path, change, message):
    tensors = convert_v7.to_state_dict(two_head_model())
    write_builder_folder(tmp_path / "hf", tensors, builder_config(tensors) | change)
    with pytest.raises(CheckpointLayoutError, match=message):
        load_official(tmp_path / "hf")


def test_a_folder_with_rwkv_blocks_tuned_state_and_an_unknown_layout_name_are_refused(tmp_path):
    model = two_head_model()
    tensors = convert_v7.to_state_dict(model)
    write_builder_folder(tmp_path / "hf", {**tensors, "init_state.0.wkv": np.zeros((2, 64, 64), np.float32)})
    with pytest.raises(CheckpointLayoutError, match="init_state"):
        load_official(tmp_path / "hf")
    with pytest.raises(ValueError, match="no Hugging Face layout 'gguf'"):
        save_hf(model, tmp_path / "out", layout="gguf")
