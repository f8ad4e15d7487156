"""RWKV-7 official checkpoints (BlinkDL ``.pth`` state dicts, ``x070``) <-> :class:`RWKV7`.

The official layout (C = n_embd, H heads of N, F = ffn_dim, V = vocab_size, D_w / D_a / D_v / D_g the LoRA
ranks), per block after ``blocks.0.ln0`` and ``blocks.N.ln1`` / ``ln2`` (``[C]`` each)::

    att.x_r, x_w, x_k, x_v, x_a, x_g  [1, 1, C]
    att.w1 [C, D_w], att.w2 [D_w, C], att.w0 [1, 1, C]      decay
    att.a1 [C, D_a], att.a2 [D_a, C], att.a0 [1, 1, C]      in-context learning rate
    att.v1 [C, D_v], att.v2 [D_v, C], att.v0 [1, 1, C]      value residual (unused in block 0)
    att.g1 [C, D_g], att.g2 [D_g, C]                        gate
    att.k_k, att.k_a [1, 1, C], att.r_k [H, N]
    att.receptance/key/value/output.weight [C, C], att.ln_x.weight/.bias [C]
    ffn.x_k [1, 1, C], ffn.key.weight [F, C], ffn.value.weight [C, F]

plus ``emb.weight [V, C]``, ``ln_out.weight/.bias [C]``, ``head.weight [V, C]``, in this order (that of
``RWKV_Tmix_x070`` / ``RWKV_CMix_x070``; the 7v0 tiny-rwkv fixture has it too). The LoRA matrices are used as
``x @ w1 @ w2``, so they are stored as they are; the ``*.weight`` of torch Linears are transposed. A parameter
path of :class:`RWKV7` spells the official name (``kernel`` is ``weight``).

Block 0's ``att.v0, v1, v2``: RWKV-LM's trainer (``RWKV_Tmix_x070.__init__``) creates them in every block,
block 0 included, where the forward pass never reads them; fla's converter and some released files leave them
out. Both layouts load (a file without them gets zeros there, never read); we write them, as the trainer does,
so RWKV-LM's strict ``load_state_dict`` takes our files, and a file that has them round-trips bit for bit.
"""

from collections.abc import Iterable, Mapping

import numpy as np

from rwkv_jax.checkpoint.layout import block_count, check_keys, tensor_shape
from rwkv_jax.checkpoint.transfer import dotted_name, linear_weights, model_from_tensors, official_tensors
from rwkv_jax.models.common import require_published
from rwkv_jax.models.rwkv7.model import RWKV7, RWKV7Config
from rwkv_jax.wkv.impl import Impl

LAYOUT = "RWKV-7"

_is_linear = linear_weights(frozenset({"receptance", "key", "value", "output", "head"}))
_LORAS = {"w": "decay_lora", "a": "iclr_lora", "v": "value_lora", "g": "gate_lora"}
_LINEAR = ("receptance", "key", "value", "output")


BLOCK0_VALUE = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")  # unused; not in every file


def _att_names(value_residual: bool) -> list[str]:
    names = [f"x_{n}" for n in "rwkvag"]
    for prefix in "wavg":
        if prefix == "v" and not value_residual:
            continue
        names += [f"{prefix}1", f"{prefix}2"] + ([] if prefix == "g" else [f"{prefix}0"])
    return [*names, "k_k", "k_a", "r_k", *(f"{m}.weight" for m in _LINEAR), "ln_x.weight", "ln_x.bias"]


def official_names(n_layer: int, block0_value: bool = True) -> list[str]:
    """Every tensor name of an ``n_layer`` RWKV-7 checkpoint, in the official order; ``block0_value=False``
    leaves out block 0's unused ``att.v0, v1, v2`` (:data:`BLOCK0_VALUE`)."""
    names = ["emb.weight"]
    for i in range(n_layer):
        norms = ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2")
        names += [f"blocks.{i}.{ln}.{p}" for ln in norms for p in ("weight", "bias")]
        names += [f"blocks.{i}.att.{p}" for p in _att_names(value_residual=i > 0 or block0_value)]
        names += [f"blocks.{i}.ffn.{p}" for p in ("x_k", "key.weight", "value.weight")]
    return [*names, "ln_out.weight", "ln_out.bias", "head.weight"]


def has_block0_value(keys: Iterable[str]) -> bool:
    """Whether a file holds block 0's unused value-residual tensors (any of them: the rest are then due)."""
    return not set(BLOCK0_VALUE).isdisjoint(keys)


def expected_shapes(config: RWKV7Config) -> dict[str, tuple[int, ...]]:
    """The official ``{name: shape}`` of a checkpoint for ``config`` (every block with ``v0, v1, v2``, as
    RWKV-LM's trainer writes), in the official order."""
    C, F, V, H, N = config.n_embd, config.ffn_dim, config.vocab_size, config.n_head, config.head_size
    by_part = {
        "emb.weight": (V, C),
        "head.weight": (V, C),
        "att.r_k": (H, N),
        "ffn.key.weight": (F, C),
        "ffn.value.weight": (C, F),
        **{f"att.{m}.weight": (C, C) for m in _LINEAR},
    }
    for prefix, field in _LORAS.items():
        rank = getattr(config, field)
        by_part |= {f"att.{prefix}1": (C, rank), f"att.{prefix}2": (rank, C)}

    def shape(name: str) -> tuple[int, ...]:
        part = name.split(".", 2)[-1] if name.startswith("blocks.") else name
        if part in by_part:
            return by_part[part]
        norm = part.split(".")[-2].startswith("ln")  # ln0/1/2, ln_x, ln_out; else x_*, w0, a0, v0, k_k, k_a
        return (C,) if norm else (1, 1, C)

    return {name: shape(name) for name in official_names(config.n_layer)}


def matches(keys: Iterable[str]) -> bool:
    """True for the RWKV-7 layout: a normalised-key scale ``k_k`` and the ``r_k`` bonus."""
    return {"blocks.0.att.k_k", "blocks.0.att.r_k"} <= set(keys)


def layout_keys(keys: Iterable[str]) -> list[str]:
    """The names an RWKV-7 checkpoint with as many blocks (and block 0's value residual or not) must hold."""
    keys = list(keys)
    return official_names(block_count(keys), has_block0_value(keys))


def config_from_state_dict(
    tensors: Mapping[str, np.ndarray],
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    wkv_impl: Impl | str = Impl.AUTO,
    group_norm_eps: float = 64e-5,
    layer_norm_eps: float = 1e-5,
) -> RWKV7Config:
    """Infers the sizes from the names and shapes (heads from ``r_k``, LoRA ranks from ``*1``)."""
    check_keys(tensors.keys(), layout_keys(tensors.keys()), LAYOUT)
    n_layer = block_count(tensors.keys())
    vocab_size, n_embd = tensor_shape(tensors, "emb.weight", 2, LAYOUT)
    _, head_size = tensor_shape(tensors, "blocks.0.att.r_k", 2, LAYOUT)
    ffn_dim, _ = tensor_shape(tensors, "blocks.0.ffn.key.weight", 2, LAYOUT)
    ranks = {}
    for prefix, field in _LORAS.items():
        block = 1 if prefix == "v" and not has_block0_value(tensors) else 0
        if block < n_layer:
            ranks[field] = tensor_shape(tensors, f"blocks.{block}.att.{prefix}1", 2, LAYOUT)[1]
    return RWKV7Config(
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_embd=n_embd,
        head_size=head_size,
        ffn_dim=ffn_dim,
        group_norm_eps=group_norm_eps,
        layer_norm_eps=layer_norm_eps,
        dtype=dtype,
        param_dtype=param_dtype,
        wkv_impl=wkv_impl,
        **ranks,
    )


def from_state_dict(
    tensors: Mapping[str, np.ndarray],
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    wkv_impl: Impl | str = Impl.AUTO,
    group_norm_eps: float = 64e-5,
    layer_norm_eps: float = 1e-5,
) -> RWKV7:
    """Builds an :class:`RWKV7` holding exactly the official tensors (cast to ``param_dtype``).

    Raises :class:`CheckpointLayoutError` naming any missing or unexpected tensor or a wrong shape before
    building anything. The model is built abstractly (no random init) and then filled; block 0's unused
    ``v0, v1, v2`` are zeros when the file leaves them out.
    """
    config = config_from_state_dict(
        tensors,
        dtype=dtype,
        param_dtype=param_dtype,
        wkv_impl=wkv_impl,
        group_norm_eps=group_norm_eps,
        layer_norm_eps=layer_norm_eps,
    )
    shapes = expected_shapes(config)
    if not has_block0_value(tensors):
        tensors = {**tensors, **{name: np.zeros(shapes[name], np.float32) for name in BLOCK0_VALUE}}
    return model_from_tensors(RWKV7, config, tensors, shapes, dotted_name, _is_linear, LAYOUT)


def to_state_dict(model: RWKV7, dtype: np.dtype | str | None = np.float32) -> dict[str, np.ndarray]:
    """Official state dict of ``model`` in the official order; ``dtype=None`` keeps the parameter dtype.

    Raises ValueError naming the switches when ``model.config`` is not the published architecture
    (an ablation), before any tensor is made.
    """
    require_published(model.config, LAYOUT)
    return official_tensors(model, dotted_name, _is_linear, expected_shapes(model.config), dtype)
