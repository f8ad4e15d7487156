"""RWKV-7 in the Hugging Face format of RWKV-block (the ``RWKV/v7-Goose-*-HF`` releases) <-> BlinkDL names.

RWKV-block's ``RWKV7ForCausalLM`` (``hf_builder/hf_code/v7_goose/modeling_rwkv7.py``) is its
``RWKV7GooseModel`` with Hugging Face's interfaces added, so its parameters carry BlinkDL's names and shapes
(``emb.weight``, ``blocks.N.ln0/ln1/ln2``, ``blocks.N.att.x_r [1, 1, C]``, ..., ``ln_out``, ``head.weight``;
block 0 has no ``v0 v1 v2``, ``rwkv7_time_mix.py``), and ``hf_builder.py`` writes a ``.pth``'s state dict
unchanged into ``model.safetensors``. Its ``config.json`` shares fla's ``model_type: rwkv7`` but holds other
fields (``hidden_size``, ``num_hidden_layers``, ``vocab_size``, ``head_size``, ``hidden_size_att``,
``hidden_size_ffn``, ``tmix_backend``), so the tensor names tell the two layouts apart (:func:`matches`).
The group norm's eps is ``1e-5 * head_size`` there (``rwkv7_time_mix.py``, ``ln_x``).

A state-tuned RWKV-block model also stores ``init_state.N.wkv``; its orientation is not documented there, so
such a file is refused rather than guessed (tune a state here and save it with
:func:`rwkv_jax.finetune.state.save_state`).
"""

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from rwkv_jax.checkpoint.layout import CheckpointLayoutError, block_count
from rwkv_jax.models.rwkv7 import convert as convert_v7
from rwkv_jax.models.rwkv7.model import RWKV7

NAME = "rwkv-block"
MODEL_TYPE = "rwkv7"
FAMILY = "rwkv7"
LAYOUT = "RWKV-7 (Hugging Face, RWKV-block)"
GROUP_NORM_EPS_PER_HEAD_DIM = 1e-5  # ln_x's eps over the head size (rwkv7_time_mix.py)
STORAGE_DTYPES = ("float32", "bfloat16", "float16")


def matches(keys: Iterable[str]) -> bool:
    """True for tensors under BlinkDL's names (what RWKV-block's folders hold)."""
    return any(key == "emb.weight" or key.startswith("blocks.") for key in keys)


def _check(condition: bool, folder_says: str, tensors_say: str) -> None:
    if not condition:
        message = f"config.json says {folder_says}, but the tensors hold {tensors_say}"
        raise CheckpointLayoutError(f"{LAYOUT}: {message}")


def _check_config(tensors: Mapping[str, np.ndarray], hf_config: Mapping[str, Any]) -> int:
    """Checks config.json against the tensors' sizes (a folder mixing two models is refused); returns the
    head size."""
    tuned = sorted(key for key in tensors if key.startswith("init_state."))
    if tuned:
        raise CheckpointLayoutError(
            f"{LAYOUT}: the folder holds RWKV-block's tuned state {tuned[:2]}..., whose orientation is not "
            "documented; load the model without it (a folder without init_state.*)"
        )
    for key in ("emb.weight", "blocks.0.att.r_k"):
        if key not in tensors or np.ndim(tensors[key]) != 2:
            raise CheckpointLayoutError(f"{LAYOUT}: expected a 2-d tensor {key!r} (BlinkDL's names)")
    vocab, width = np.shape(tensors["emb.weight"])
    heads, head_size = np.shape(tensors["blocks.0.att.r_k"])
    layers = block_count(tensors)
    for field, value in (("vocab_size", vocab), ("hidden_size", width), ("num_hidden_layers", layers)):
        stated = hf_config.get(field)
        _check(stated is None or stated == value, f"{field} {stated}", f"{value}")
    stated = hf_config.get("head_size")
    _check(stated is None or stated == head_size, f"head_size {stated}", f"{heads} heads of {head_size}")
    attention = hf_config.get("hidden_size_att")
    _check(attention in (None, width), f"hidden_size_att {attention}", f"hidden_size {width}")
    return head_size


def to_blinkdl(
    tensors: Mapping[str, np.ndarray], hf_config: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(BlinkDL tensors, load options)`` of an RWKV-block folder: the tensors as they are (the family's
    converter then checks every name and shape, as for a ``.pth``) and ln_x's eps for the head size.

    Raises :class:`CheckpointLayoutError` when config.json disagrees with the tensors or the folder holds a
    tuned state.
    """
    head_size = _check_config(tensors, hf_config)
    return dict(tensors), {"group_norm_eps": GROUP_NORM_EPS_PER_HEAD_DIM * head_size}


def hf_config_of(model: RWKV7, dtype: str) -> dict[str, Any]:
    """RWKV-block's ``config.json`` for ``model`` stored in ``dtype`` (the fields its ``RWKV7Config`` reads;
    no ``auto_map``: the folder carries no code, so Hugging Face's loader needs RWKV-block's)."""
    config = model.config
    if not math.isclose(config.group_norm_eps, GROUP_NORM_EPS_PER_HEAD_DIM * config.head_size, rel_tol=1e-9):
        raise ValueError(
            f"RWKV-block fixes ln_x's eps at {GROUP_NORM_EPS_PER_HEAD_DIM} * head_size = "
            f"{GROUP_NORM_EPS_PER_HEAD_DIM * config.head_size}; this model has {config.group_norm_eps}"
        )
    return {
        "architectures": ["RWKV7ForCausalLM"],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "num_hidden_layers": config.n_layer,
        "hidden_size": config.n_embd,
        "hidden_size_att": config.n_embd,
        "hidden_size_ffn": config.ffn_dim,
        "head_size": config.head_size,
        "tmix_backend": "auto",
        "bos_token_id": 0,  # RWKV vocabularies: id 0 ends (and so begins) a document
        "eos_token_id": 0,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
    }


def from_blinkdl(model: RWKV7, dtype: str = "float32") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config.json, {BlinkDL name: array in dtype})`` of ``model``, without block 0's unused ``v0 v1 v2``
    (RWKV-block's block 0 has no such parameters, so its strict loading would reject them)."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {list(STORAGE_DTYPES)}")
    tensors = convert_v7.to_state_dict(model, dtype=dtype)
    return hf_config_of(model, dtype), {k: v for k, v in tensors.items() if k not in convert_v7.BLOCK0_VALUE}
