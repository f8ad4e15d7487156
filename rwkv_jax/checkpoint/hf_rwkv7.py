"""RWKV-7 in the Hugging Face format of flash-linear-attention (fla) <-> BlinkDL names.

The layout is that of fla's ``RWKV7ForCausalLM`` (``fla/models/rwkv7/modeling_rwkv7.py``,
``fla/layers/rwkv7.py``, ``fla/layers/rwkv6.py::LoRA``; fla-core 0.6.0) and of the files its converter
``utils/convert_from_rwkv7.py`` writes, which the RWKV-7 releases on the Hugging Face hub
(``fla-hub/rwkv7-*``) are. Per block ``model.layers.N.`` (C = hidden_size, D = a LoRA rank)::

    pre_norm.weight/.bias [C]             ln0 (block 0 only)      attn_norm.*, ffn_norm.*   ln1, ln2
    attn.x_r ... attn.x_g [1, 1, C]       att.x_r ... x_g   (older fla: one attn.x_x [6, C], rows r w k v a g)
    attn.k_k, attn.k_a [C]                att.k_k, att.k_a [1, 1, C]
    attn.r_k [H, N]                       att.r_k
    attn.{r,k,v,o}_proj.weight [C, C]     att.receptance/key/value/output.weight
    attn.{w,a,v,g}_lora.lora.0.weight     att.{w,a,v,g}1 [C, D], transposed ([D, C])
    attn.{w,a,v,g}_lora.lora.2.weight     att.{w,a,v,g}2 [D, C], transposed ([C, D])
    attn.{w,a,v}_lora.lora.2.bias [C]     att.w0, a0, v0 [1, 1, C] (g has no bias; block 0 has no v_lora)
    attn.g_norm.weight/.bias [C]          att.ln_x
    ffn.x_k [C], ffn.key/value.weight     ffn.x_k [1, 1, C], ffn.key/value.weight

plus ``model.embeddings.weight``, ``model.norm.weight/.bias`` (ln_out) and ``lm_head.weight`` (head; absent
when ``tie_word_embeddings``, the embedding is then the head). ``norm_bias: false`` drops the layer norms'
biases (zeros here). fla's group norm uses eps ``head_dim * norm_eps`` (fla/layers/rwkv7.py, ``g_norm``),
BlinkDL's 64e-5 = 64 * 1e-5: the same for head size 64, which every release has.
"""

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from rwkv_jax.checkpoint.layout import CheckpointLayoutError, check_tensors
from rwkv_jax.models.rwkv7 import convert as convert_v7
from rwkv_jax.models.rwkv7.model import RWKV7, RWKV7Config

NAME = "fla"  # save_hf(layout=...)
MODEL_TYPE = "rwkv7"
FAMILY = "rwkv7"  # the registry name of the family this layout converts to
# The dtypes a file is written in (config.json's torch_dtype names them the same way).
STORAGE_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
LAYOUT = "RWKV-7 (Hugging Face)"
# fla's RWKV7Config defaults for the fields read here (fla/models/rwkv7/configuration_rwkv7.py, __init__).
FLA_DEFAULTS = {
    "hidden_size": 2048,
    "hidden_ratio": 4,
    "intermediate_size": None,
    "num_hidden_layers": 24,
    "head_dim": 64,
    "num_heads": None,
    "decay_low_rank_dim": 64,
    "gate_low_rank_dim": 128,
    "a_low_rank_dim": 64,
    "v_low_rank_dim": 16,
    "hidden_act": "sqrelu",
    "norm_first": True,
    "norm_bias": True,
    "norm_eps": 1e-5,
    "attn": None,
    "tie_word_embeddings": False,
    "vocab_size": 32000,
    "value_dim": None,
}
_LORAS = {"decay_low_rank_dim": "decay_lora", "a_low_rank_dim": "iclr_lora"}
_LORAS |= {"v_low_rank_dim": "value_lora", "gate_low_rank_dim": "gate_lora"}

# How a tensor moves between the layouts: as it is (shapes equal), transposed, or [1, 1, C] <-> [C].
SAME, TRANSPOSE, FLAT = "same", "transpose", "flat"
_TOP = {"emb.weight": "model.embeddings.weight", "head.weight": "lm_head.weight"}
_TOP |= {"ln_out.weight": "model.norm.weight", "ln_out.bias": "model.norm.bias"}
_NORMS = {"ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}
_ATT_MODULES = {
    "receptance": "r_proj",
    "key": "k_proj",
    "value": "v_proj",
    "output": "o_proj",
    "ln_x": "g_norm",
}
_LORA_PARTS = {
    "1": ("lora.0.weight", TRANSPOSE),
    "2": ("lora.2.weight", TRANSPOSE),
    "0": ("lora.2.bias", FLAT),
}
_MIXES = "rwkvag"  # the rows of the older fused attn.x_x


def matches(keys: Iterable[str]) -> bool:
    """True for tensors under fla's names (``model.layers.N.*``, ``model.embeddings.weight``)."""
    return any(key.startswith(("model.layers.", "model.embeddings.")) for key in keys)


def hf_name(name: str) -> tuple[str, str]:
    """``(Hugging Face name, how the tensor moves)`` of the BlinkDL tensor ``name``
    (``blocks.3.att.w1``: ``("model.layers.3.attn.w_lora.lora.0.weight", TRANSPOSE)``)."""
    if name in _TOP:
        return _TOP[name], SAME
    _, block, module, rest = name.split(".", 3)
    layer = f"model.layers.{block}"
    if module in _NORMS:
        return f"{layer}.{_NORMS[module]}.{rest}", SAME
    if module == "ffn":
        return f"{layer}.ffn.{rest}", FLAT if rest == "x_k" else SAME
    if re.fullmatch("[wavg][012]", rest):
        part, kind = _LORA_PARTS[rest[1]]
        return f"{layer}.attn.{rest[0]}_lora.{part}", kind
    head, dot, tail = rest.partition(".")
    if head in _ATT_MODULES:
        return f"{layer}.attn.{_ATT_MODULES[head]}{dot}{tail}", SAME
    return f"{layer}.attn.{rest}", FLAT if rest in ("k_k", "k_a") else SAME


def _moved_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    return shape[::-1] if kind == TRANSPOSE else (shape[-1],) if kind == FLAT else shape


def _setting(hf_config: Mapping[str, Any], key: str) -> Any:
    value = hf_config.get(key)
    return FLA_DEFAULTS[key] if value is None else value


def _refuse(condition: bool, message: str) -> None:
    if condition:
        raise CheckpointLayoutError(f"{LAYOUT}: {message}")


def config_from_hf(hf_config: Mapping[str, Any], **fields: Any) -> RWKV7Config:
    """The :class:`RWKV7Config` of an fla ``config.json`` (``fields`` add dtype, wkv_impl, ...).

    Raises :class:`CheckpointLayoutError` for settings our RWKV-7 cannot represent: hybrid attention
    layers (``attn``), ``norm_first: false``, a ``value_dim`` other than ``hidden_size``, an activation
    other than sqrelu.
    """
    _refuse(hf_config.get("model_type") != MODEL_TYPE, f"model_type {hf_config.get('model_type')!r}")
    setting = {key: _setting(hf_config, key) for key in FLA_DEFAULTS}
    C, L = setting["hidden_size"], setting["num_hidden_layers"]
    _refuse(setting["attn"] is not None, f"hybrid attention layers (attn={setting['attn']!r}) not supported")
    _refuse(not setting["norm_first"], "norm_first false (no ln0) is not the RWKV-7 architecture")
    _refuse(setting["hidden_act"] != "sqrelu", f"hidden_act {setting['hidden_act']!r}, expected 'sqrelu'")
    value_dim = setting["value_dim"]
    value_dims = [value_dim] * L if isinstance(value_dim, int) else value_dim or [C] * L
    _refuse(any(v != C for v in value_dims), f"value_dim {value_dim} differs from hidden_size {C}")
    # fla's attention takes head_dim when it is set, else hidden_size // num_heads (fla/layers/rwkv7.py,
    # RWKV7Attention.__init__): its converter leaves num_heads as computed for the default hidden size
    # (32 beside head_dim 64 for a 64-wide model), so num_heads alone is not to be trusted.
    head_dim = setting["head_dim"]
    if hf_config.get("head_dim") is None and hf_config.get("num_heads") is not None:
        head_dim = C // hf_config["num_heads"]
    ffn_dim = setting["intermediate_size"]
    if ffn_dim is None:  # fla's RWKV7FeedForward: hidden_size * hidden_ratio, rounded up to a multiple of 32
        ffn_dim = 32 * math.ceil(int(C * setting["hidden_ratio"]) / 32)
    return RWKV7Config(
        vocab_size=setting["vocab_size"],
        n_layer=L,
        n_embd=C,
        head_size=head_dim,
        ffn_dim=ffn_dim,
        group_norm_eps=head_dim * setting["norm_eps"],
        layer_norm_eps=setting["norm_eps"],
        **{ours: setting[theirs] for theirs, ours in _LORAS.items()},
        **fields,
    )


def _layout(config: RWKV7Config, hf_config: Mapping[str, Any], keys: set[str]) -> dict[str, tuple]:
    """``{BlinkDL name: (Hugging Face name or None, kind)}`` for this file's variant; None: not stored
    (a tied head, an absent norm bias, a mix inside the older ``attn.x_x``)."""
    tied, norm_bias = _setting(hf_config, "tie_word_embeddings"), _setting(hf_config, "norm_bias")
    layout = {}
    for name in convert_v7.official_names(config.n_layer, block0_value=False):  # fla drops them
        theirs, kind = hf_name(name)
        part = theirs.split(".")
        stored = not (tied and name == "head.weight")
        stored &= norm_bias or not (
            part[-1] == "bias" and part[-2] in ("pre_norm", "attn_norm", "ffn_norm", "norm")
        )
        stored &= not (part[-2] == "attn" and part[-1] in ("x_" + m for m in _MIXES) and _fused_mixes(keys))
        layout[name] = (theirs if stored else None, kind)
    return layout


def _fused_mixes(keys: set[str]) -> bool:
    return "model.layers.0.attn.x_x" in keys


def expected_hf_shapes(config: RWKV7Config, hf_config: Mapping[str, Any], keys: set[str]) -> dict:
    """``{Hugging Face name: shape}`` that a file of this config and variant holds."""
    shapes = convert_v7.expected_shapes(config)
    expected = {
        theirs: _moved_shape(shapes[name], kind)
        for name, (theirs, kind) in _layout(config, hf_config, keys).items()
        if theirs is not None
    }
    if _fused_mixes(keys):
        expected |= {f"model.layers.{i}.attn.x_x": (6, config.n_embd) for i in range(config.n_layer)}
    if _setting(hf_config, "tie_word_embeddings") and "lm_head.weight" in keys:
        expected["lm_head.weight"] = shapes["head.weight"]  # saved anyway by some tools; the tie wins
    return expected


def to_blinkdl(
    tensors: Mapping[str, np.ndarray], hf_config: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(BlinkDL tensors, load options)`` of a Hugging Face RWKV-7 checkpoint; views of ``tensors`` where
    possible (transposes and reshapes copy nothing, so a memory-mapped file stays mapped).

    Raises :class:`CheckpointLayoutError` naming the missing and unexpected Hugging Face keys, or a wrong
    shape, before any tensor is moved.
    """
    config = config_from_hf(hf_config)
    keys = set(tensors)
    check_tensors(tensors, expected_hf_shapes(config, hf_config, keys), LAYOUT)
    shapes = convert_v7.expected_shapes(config)
    out = {}
    for name, (theirs, kind) in _layout(config, hf_config, keys).items():
        if theirs is not None:
            tensor = tensors[theirs]
            out[name] = tensor.T if kind == TRANSPOSE else tensor.reshape(shapes[name])
        elif name == "head.weight":
            out[name] = tensors["model.embeddings.weight"]
        elif name.endswith(".bias"):
            out[name] = np.zeros(shapes[name], np.float32)
        else:  # blocks.N.att.x_?: a row of attn.x_x
            block, mix = name.split(".")[1], name[-1]
            out[name] = tensors[f"model.layers.{block}.attn.x_x"][_MIXES.index(mix)].reshape(shapes[name])
    return out, {"group_norm_eps": config.group_norm_eps, "layer_norm_eps": config.layer_norm_eps}


def hf_config_of(config: RWKV7Config, dtype: str) -> dict[str, Any]:
    """The fla ``config.json`` of a model with ``config`` stored in ``dtype``.

    Raises ValueError when fla's tied group-norm eps (``head_dim * norm_eps``) cannot equal this model's
    ``group_norm_eps`` with its ``layer_norm_eps``.
    """
    C, N = config.n_embd, config.head_size
    if not math.isclose(config.group_norm_eps, N * config.layer_norm_eps, rel_tol=1e-9):
        raise ValueError(
            f"the Hugging Face RWKV-7 format ties ln_x's eps to head_dim * norm_eps = {N} * "
            f"{config.layer_norm_eps}; this model has group_norm_eps {config.group_norm_eps}"
        )
    return {
        "architectures": ["RWKV7ForCausalLM"],
        "model_type": MODEL_TYPE,
        "attn_mode": "chunk",
        "hidden_size": C,
        "hidden_ratio": config.ffn_dim / C,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layer,
        "head_dim": N,
        "num_heads": config.n_head,
        **{theirs: getattr(config, ours) for theirs, ours in _LORAS.items()},
        "hidden_act": "sqrelu",
        "norm_first": True,
        "norm_bias": True,
        "norm_eps": config.layer_norm_eps,
        "attn": None,
        "tie_word_embeddings": False,
        "fuse_norm": True,
        "vocab_size": config.vocab_size,
        "value_dim": [C] * config.n_layer,
        "bos_token_id": 0,  # RWKV vocabularies: id 0 ends (and so begins) a document
        "eos_token_id": 0,
        "torch_dtype": dtype,
    }


def from_blinkdl(model: RWKV7, dtype: str = "float32") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(config.json, {Hugging Face name: array in dtype})`` of ``model``.

    Block 0's unused ``v0 v1 v2`` are left out, as fla's converter does (its ``unused_names``).
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(STORAGE_DTYPES)}")
    hf_config = hf_config_of(model.config, dtype)
    tensors = {}
    for name, tensor in convert_v7.to_state_dict(model, dtype=None).items():
        if name in convert_v7.BLOCK0_VALUE:
            continue
        theirs, kind = hf_name(name)
        moved = tensor.T if kind == TRANSPOSE else tensor.reshape(_moved_shape(tensor.shape, kind))
        tensors[theirs] = np.ascontiguousarray(moved).astype(STORAGE_DTYPES[dtype])
    return hf_config, tensors
