"""Eagle (RWKV-5) and Finch (RWKV-6) official checkpoints (BlinkDL ``.pth`` state dicts) <-> :class:`RWKV6`.

The official layout (C = n_embd, A = dim_att = H * N, F = ffn_dim, V = vocab_size, D / E = the Finch LoRA
ranks), per block after ``blocks.0.ln0`` and ``blocks.N.ln1`` / ``ln2`` (``[C]`` each)::

    Finch "6" (x060)                          Eagle "5.2" (x052)              RWKV-5.1 (no gate)
    att.time_maa_x/w/k/v/r/g  [1, 1, C]       att.time_mix_k/v/r/g [1, 1, C]  att.time_mix_k/v/r [1, 1, C]
    att.time_maa_w1  [C, 5 D]                 att.time_decay  [H, N]          att.time_decay  [H]
    att.time_maa_w2  [5, D, C]                att.time_faaaa  [H, N]          att.time_first  [H]
    att.time_decay   [1, 1, A]
    att.time_decay_w1 [C, E], _w2 [E, A]
    att.time_faaaa   [H, N]
    att.receptance/key/value.weight [A, C], att.output.weight [C, A], att.gate.weight [A, C] (not 5.1),
    att.ln_x.weight/.bias [A]
    ffn.time_maa_k/r (Finch) or ffn.time_mix_k/r (Eagle) [1, 1, C]
    ffn.key.weight [F, C], ffn.receptance.weight [C, C], ffn.value.weight [C, F]

plus ``emb.weight [V, C]``, ``ln_out.weight/.bias [C]``, ``head.weight [V, C]``. Inside ``att`` and ``ffn``
the order is that of BlinkDL/RWKV-LM's modules (``RWKV_Tmix_x060``/``x052``, ``RWKV_CMix_*``,
``RWKV_TimeMix_RWKV5_Preview``); the 6v0 tiny-rwkv fixture has exactly this order, the 5v1/5v2 fixtures
(trained with other code) list the same tensors in another order. The version is told apart by the names:
``time_maa_w1`` (6), ``time_faaaa`` (5.2), ``time_first`` without a gate (5.1).

A model parameter's path spells the official name once the pluggable parts ``mix``, ``decay`` and ``bonus``
are left out (``blocks/0/att/decay/time_decay`` is ``blocks.0.att.time_decay``, ``kernel`` is ``weight``). The
conversion transposes Linear weights and reshapes ``(1, 1, n)`` vectors to ``[n]``; nothing else changes.
"""

from collections.abc import Iterable, Mapping

import numpy as np

from rwkv_jax.checkpoint.layout import (
    CheckpointLayoutError,
    block_count,
    check_keys,
    tensor_shape,
)
from rwkv_jax.checkpoint.transfer import dotted_name, linear_weights, model_from_tensors, official_tensors
from rwkv_jax.models.common import require_published
from rwkv_jax.models.rwkv6.model import RWKV6, RWKV6Config
from rwkv_jax.wkv.impl import Impl

LAYOUT = "RWKV-5/6"

# Modules stored as torch Linear (weight [out, in]); ours hold the transposed kernel [in, out].
LINEAR_MODULES = frozenset({"receptance", "key", "value", "output", "gate", "head"})
# Path parts of the model that the official names do not have (the version's pluggable parts).
PLUGGABLE_PARTS = frozenset({"mix", "decay", "bonus"})

_ATT_LINEAR = ("receptance", "key", "value", "output", "gate")
_ATT = {
    "6": (
        *(f"time_maa_{n}" for n in "xwkvrg"),
        "time_maa_w1",
        "time_maa_w2",
        "time_decay",
        "time_decay_w1",
        "time_decay_w2",
        "time_faaaa",
        *(f"{m}.weight" for m in _ATT_LINEAR),
    ),
    "5.2": (
        *(f"time_mix_{n}" for n in "kvrg"),
        "time_decay",
        "time_faaaa",
        *(f"{m}.weight" for m in _ATT_LINEAR),
    ),
    "5.1": (
        *(f"time_mix_{n}" for n in "kvr"),
        "time_decay",
        "time_first",
        *(f"{m}.weight" for m in _ATT_LINEAR[:-1]),
    ),
}
_FFN_LINEAR = ("key.weight", "receptance.weight", "value.weight")


def official_names(version: str, n_layer: int) -> list[str]:
    """Every tensor name of an ``n_layer`` checkpoint of ``version``, in the official order."""
    ffn_mix = "time_maa_" if version == "6" else "time_mix_"
    names = ["emb.weight"]
    for i in range(n_layer):
        norms = ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2")
        names += [f"blocks.{i}.{ln}.{p}" for ln in norms for p in ("weight", "bias")]
        names += [f"blocks.{i}.att.{p}" for p in (*_ATT[version], "ln_x.weight", "ln_x.bias")]
        names += [f"blocks.{i}.ffn.{p}" for p in (ffn_mix + "k", ffn_mix + "r", *_FFN_LINEAR)]
    return [*names, "ln_out.weight", "ln_out.bias", "head.weight"]


def expected_shapes(config: RWKV6Config) -> dict[str, tuple[int, ...]]:
    """The official ``{name: shape}`` of a checkpoint for ``config``, in the official order."""
    C, A, F, V = config.n_embd, config.dim_att, config.ffn_dim, config.vocab_size
    H, N, D, E = config.n_head, config.head_size, config.time_mix_extra_dim, config.time_decay_extra_dim
    by_part = {
        "emb.weight": (V, C),
        "head.weight": (V, C),
        "att.time_maa_w1": (C, 5 * D),
        "att.time_maa_w2": (5, D, C),
        "att.time_decay": {"6": (1, 1, A), "5.2": (H, N), "5.1": (H,)}[config.version],
        "att.time_decay_w1": (C, E),
        "att.time_decay_w2": (E, A),
        "att.time_faaaa": (H, N),
        "att.time_first": (H,),
        "att.receptance.weight": (A, C),
        "att.key.weight": (A, C),
        "att.value.weight": (A, C),
        "att.gate.weight": (A, C),
        "att.output.weight": (C, A),
        "att.ln_x.weight": (A,),
        "att.ln_x.bias": (A,),
        "ffn.key.weight": (F, C),
        "ffn.receptance.weight": (C, C),
        "ffn.value.weight": (C, F),
    }

    def shape(name: str) -> tuple[int, ...]:
        part = name.split(".", 2)[-1] if name.startswith("blocks.") else name
        if part in by_part:
            return by_part[part]
        return (1, 1, C) if ".time_m" in name else (C,)  # time_mix_* / time_maa_*, then the LayerNorms

    return {name: shape(name) for name in official_names(config.version, config.n_layer)}


def detect_version(keys: Iterable[str]) -> str:
    """``"6"``, ``"5.2"`` or ``"5.1"`` from the names of block 0's time mix.

    Raises:
      CheckpointLayoutError: the names are none of the three (naming what was found).
    """
    keys = set(keys)
    att = "blocks.0.att."
    if att + "time_maa_w1" in keys:
        return "6"
    if att + "time_faaaa" in keys:
        return "5.2"
    if att + "time_first" in keys:
        if att + "gate.weight" in keys:
            raise CheckpointLayoutError(
                "RWKV-5 preview with a gate and per-head time_first (the rwkv package's 'v5.1') is not "
                "supported; supported: Finch 6 (time_maa_w1), Eagle 5.2 (time_faaaa), RWKV-5.1 without gate"
            )
        return "5.1"
    raise CheckpointLayoutError(
        f"not an Eagle/Finch checkpoint: {att}time_maa_w1 (6), time_faaaa (5.2) or time_first (5.1) expected"
    )


def matches(keys: Iterable[str]) -> bool:
    """True for the RWKV-5/6 layouts: a per-head ``ln_x`` and a ``time_decay`` (RWKV-7 has no time_decay)."""
    keys = set(keys)
    return {"blocks.0.att.ln_x.weight", "blocks.0.att.time_decay"} <= keys


def layout_keys(keys: Iterable[str]) -> list[str]:
    """The names a checkpoint of the detected version (Finch if none) with as many blocks must hold."""
    keys = list(keys)
    try:
        version = detect_version(keys)
    except CheckpointLayoutError:
        version = "6"
    return official_names(version, block_count(keys))


def config_from_state_dict(
    tensors: Mapping[str, np.ndarray],
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    wkv_impl: Impl | str = Impl.AUTO,
    group_norm_eps: float = 64e-5,
) -> RWKV6Config:
    """Infers version and sizes from names and shapes (heads from ``time_faaaa``, 5.1: ``time_first``)."""
    version = detect_version(tensors.keys())
    n_layer = block_count(tensors.keys())
    check_keys(tensors.keys(), official_names(version, n_layer), LAYOUT)
    vocab_size, n_embd = tensor_shape(tensors, "emb.weight", 2, LAYOUT)
    dim_att, _ = tensor_shape(tensors, "blocks.0.att.key.weight", 2, LAYOUT)
    ffn_dim, _ = tensor_shape(tensors, "blocks.0.ffn.key.weight", 2, LAYOUT)
    bonus = "time_first" if version == "5.1" else "time_faaaa"
    n_head = tensor_shape(tensors, f"blocks.0.att.{bonus}", 1 if version == "5.1" else 2, LAYOUT)[0]
    if dim_att % n_head:
        raise CheckpointLayoutError(
            f"{LAYOUT} checkpoint: dim_att {dim_att} is not a multiple of {n_head} heads"
        )
    lora = {}
    if version == "6":
        lora["time_mix_extra_dim"] = tensor_shape(tensors, "blocks.0.att.time_maa_w2", 3, LAYOUT)[1]
        lora["time_decay_extra_dim"] = tensor_shape(tensors, "blocks.0.att.time_decay_w1", 2, LAYOUT)[1]
    return RWKV6Config(
        version=version,
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_embd=n_embd,
        head_size=dim_att // n_head,
        dim_att=dim_att,
        ffn_dim=ffn_dim,
        group_norm_eps=group_norm_eps,
        dtype=dtype,
        param_dtype=param_dtype,
        wkv_impl=wkv_impl,
        **lora,
    )


def official_name(path: tuple) -> str:
    """Official tensor name of a parameter path (``('blocks', 0, 'att', 'decay', 'time_decay')``)."""
    return dotted_name(path, PLUGGABLE_PARTS)


_is_linear = linear_weights(LINEAR_MODULES)


def from_state_dict(
    tensors: Mapping[str, np.ndarray],
    *,
    dtype: str = "float32",
    param_dtype: str | None = None,
    wkv_impl: Impl | str = Impl.AUTO,
    group_norm_eps: float = 64e-5,
) -> RWKV6:
    """Builds an :class:`RWKV6` holding exactly the official tensors (cast to ``param_dtype``).

    ``group_norm_eps`` is the ``ln_x`` eps (64e-5 as BlinkDL; 1e-5 reproduces rwkv.cpp's RWKV-5 logits).
    Raises :class:`CheckpointLayoutError` naming any missing or unexpected tensor or a wrong shape before
    building anything. The model is built abstractly (no random init) and then filled.
    """
    config = config_from_state_dict(
        tensors, dtype=dtype, param_dtype=param_dtype, wkv_impl=wkv_impl, group_norm_eps=group_norm_eps
    )
    shapes = expected_shapes(config)
    return model_from_tensors(RWKV6, config, tensors, shapes, official_name, _is_linear, LAYOUT)


def to_state_dict(model: RWKV6, dtype: np.dtype | str | None = np.float32) -> dict[str, np.ndarray]:
    """Official state dict of ``model`` in the official order; ``dtype=None`` keeps the parameter dtype.

    Raises ValueError naming the switches when ``model.config`` is not the published architecture
    (an ablation), before any tensor is made.
    """
    require_published(model.config, LAYOUT)
    return official_tensors(model, official_name, _is_linear, expected_shapes(model.config), dtype)
