"""RWKV-4 official checkpoints (BlinkDL ``.pth`` state dicts) to and from :class:`RWKV4`.

The official layout, one ``(name, shape)`` per tensor, C = n_embd, F = ffn_dim, V = vocab_size::

    emb.weight                      [V, C]
    blocks.0.ln0.weight / .bias     [C]        (block 0 only: LayerNorm of the embedding)
    blocks.N.ln1 / ln2 .weight/.bias [C]
    blocks.N.att.time_decay         [C]        raw; the per-step decay is exp(-exp(time_decay))
    blocks.N.att.time_first         [C]
    blocks.N.att.time_mix_k/v/r     [1, 1, C]
    blocks.N.att.key/value/receptance/output.weight  [C, C]   torch Linear [out, in]
    blocks.N.ffn.time_mix_k/r       [1, 1, C]
    blocks.N.ffn.key.weight         [F, C]
    blocks.N.ffn.value.weight       [C, F]
    blocks.N.ffn.receptance.weight  [C, C]
    ln_out.weight / .bias           [C]
    head.weight                     [V, C]

The model's parameter paths spell the same names (``blocks/0/att/key/kernel`` is ``blocks.0.att.key.weight``);
the conversion transposes Linear weights (kernel ``[in, out]``) and squeezes ``time_mix_*`` to ``[C]``.
Hugging Face's ``RwkvForCausalLM`` uses the same tensors under other names: :func:`to_hf_names`,
:func:`from_hf_names`.
"""

from collections.abc import Iterable, Mapping

import numpy as np

from rwkv_jax.checkpoint.layout import (
    block_count,
    check_keys,
    tensor_shape,
)
from rwkv_jax.checkpoint.transfer import dotted_name, linear_weights, model_from_tensors, official_tensors
from rwkv_jax.models.common import require_published
from rwkv_jax.models.rwkv4.model import RWKV4, RWKV4Config
from rwkv_jax.wkv.impl import Impl

LAYOUT = "RWKV-4"

# Modules stored as torch Linear (weight [out, in]); ours hold the transposed kernel [in, out].
LINEAR_MODULES = frozenset({"key", "value", "receptance", "output", "head"})

# Block tensors in the order of the official files (the tiny-rwkv fixtures, rwkv.cpp's converter).
_ATT = ("time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r")
_ATT_LINEAR = ("key", "value", "receptance", "output")
_FFN = ("time_mix_k", "time_mix_r")
_FFN_LINEAR = ("key", "value", "receptance")


def official_names(n_layer: int) -> list[str]:
    """Every tensor name of an ``n_layer`` RWKV-4 checkpoint, in the official order."""
    names = ["emb.weight"]
    for i in range(n_layer):
        norms = ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2")
        names += [f"blocks.{i}.{ln}.{p}" for ln in norms for p in ("weight", "bias")]
        names += [f"blocks.{i}.att.{p}" for p in _ATT] + [f"blocks.{i}.att.{m}.weight" for m in _ATT_LINEAR]
        names += [f"blocks.{i}.ffn.{p}" for p in _FFN] + [f"blocks.{i}.ffn.{m}.weight" for m in _FFN_LINEAR]
    return [*names, "ln_out.weight", "ln_out.bias", "head.weight"]


def expected_shapes(config: RWKV4Config) -> dict[str, tuple[int, ...]]:
    """The official ``{name: shape}`` of a checkpoint for ``config``, in the official order."""
    C, F, V = config.n_embd, config.ffn_dim, config.vocab_size
    special = {
        "emb.weight": (V, C),
        "head.weight": (V, C),
        "ffn.key.weight": (F, C),
        "ffn.value.weight": (C, F),
    }

    def shape(name: str) -> tuple[int, ...]:
        block_part = name.split(".", 2)[-1] if name.startswith("blocks.") else name
        if block_part in special:
            return special[block_part]
        if ".time_mix_" in name:
            return (1, 1, C)
        return (C, C) if name.endswith(".weight") and name.split(".")[-2] in LINEAR_MODULES else (C,)

    return {name: shape(name) for name in official_names(config.n_layer)}


def matches(keys: Iterable[str]) -> bool:
    """True for the RWKV-4 layout: per-channel ``time_first`` and ``time_mix_k``, no RWKV-5/6 tensors."""
    keys = set(keys)
    later_versions = ("ln_x", "time_maa", "time_faaaa", "gate")
    signature = {"blocks.0.att.time_first", "blocks.0.att.time_mix_k", "blocks.0.att.time_decay"}
    return signature <= keys and not any(part in k.split(".") for k in keys for part in later_versions)


def layout_keys(keys: Iterable[str]) -> list[str]:
    """The names an RWKV-4 checkpoint with as many blocks as ``keys`` mentions must hold."""
    return official_names(block_count(keys))


def config_from_state_dict(
    tensors: Mapping[str, np.ndarray],
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    wkv_impl: Impl | str = Impl.AUTO,
) -> RWKV4Config:
    """Infers the sizes from ``emb.weight [V, C]``, ``blocks.0.ffn.key.weight [F, C]`` and the block count."""
    check_keys(tensors.keys(), layout_keys(tensors.keys()), LAYOUT)
    vocab_size, n_embd = tensor_shape(tensors, "emb.weight", 2, LAYOUT)
    ffn_dim, _ = tensor_shape(tensors, "blocks.0.ffn.key.weight", 2, LAYOUT)
    n_layer = block_count(tensors.keys())
    return RWKV4Config(
        vocab_size, n_layer, n_embd, ffn_dim, dtype=dtype, param_dtype=param_dtype, wkv_impl=wkv_impl
    )


def official_name(path: tuple) -> str:
    """Official tensor name of a model parameter path (``('blocks', 0, 'att', 'key', 'kernel')``)."""
    return dotted_name(path)


_is_linear = linear_weights(LINEAR_MODULES)


def from_state_dict(
    tensors: Mapping[str, np.ndarray],
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    wkv_impl: Impl | str = Impl.AUTO,
) -> RWKV4:
    """Builds an :class:`RWKV4` holding exactly the official tensors (cast to ``param_dtype``).

    Raises :class:`CheckpointLayoutError` naming any missing or unexpected tensor, or a wrong shape, before
    building anything. The model is built abstractly (no random init) and then filled.
    """
    config = config_from_state_dict(tensors, dtype=dtype, param_dtype=param_dtype, wkv_impl=wkv_impl)
    shapes = expected_shapes(config)
    return model_from_tensors(RWKV4, config, tensors, shapes, official_name, _is_linear, LAYOUT)


def to_state_dict(model: RWKV4, dtype: np.dtype | str | None = np.float32) -> dict[str, np.ndarray]:
    """Official state dict of ``model``, official order; ``dtype=None`` keeps the parameter dtype.

    Raises ValueError naming the switches when ``model.config`` is not the published architecture
    (an ablation), before any tensor is made.
    """
    require_published(model.config, LAYOUT)
    return official_tensors(model, official_name, _is_linear, expected_shapes(model.config), dtype)


# Hugging Face RwkvForCausalLM names, part by part (everything but head.weight sits under "rwkv.").
_HF_PARTS = {
    "emb": "embeddings",
    "ln0": "pre_ln",
    "att": "attention",
    "ffn": "feed_forward",
    "time_mix_k": "time_mix_key",
    "time_mix_v": "time_mix_value",
    "time_mix_r": "time_mix_receptance",
}
_OFFICIAL_PARTS = {hf: official for official, hf in _HF_PARTS.items()}


def to_hf_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames an official RWKV-4 state dict to Hugging Face ``RwkvForCausalLM`` names (same tensors)."""

    def rename(name: str) -> str:
        hf = ".".join(_HF_PARTS.get(part, part) for part in name.split("."))
        return hf if name == "head.weight" else "rwkv." + hf

    return {rename(name): tensor for name, tensor in tensors.items()}


def from_hf_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames a Hugging Face ``RwkvForCausalLM`` state dict to official RWKV-4 names (same tensors)."""

    def rename(name: str) -> str:
        name = name.removeprefix("rwkv.")
        return ".".join(_OFFICIAL_PARTS.get(part, part) for part in name.split("."))

    return {rename(name): tensor for name, tensor in tensors.items()}
