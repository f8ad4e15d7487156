"""Load and save BlinkDL's official checkpoints, whatever the RWKV version.

A checkpoint is a ``.pth`` file, a ``.safetensors`` file with the same (BlinkDL) tensor names, or a Hugging
Face folder (``config.json`` + weights, :mod:`rwkv_jax.checkpoint.hf`), whose names are mapped to BlinkDL's
first. :func:`load_official` tells them apart by the path alone.

Each registered family (:mod:`rwkv_jax.models.family`) with an official format names its converter module;
the family of a file is found from its tensor names alone, and nothing is built before the names and shapes
are checked. A converter module provides:

- ``matches(keys) -> bool``: whether the tensor names are this family's (a cheap signature test).
- ``layout_keys(keys) -> list[str]``: the names this family's file with as many blocks would hold; used
  to tell a user how an unknown file differs from the closest known layout.
- ``from_state_dict(tensors, *, dtype, wkv_impl, **options) -> model``: checks names and shapes (raising
  :class:`CheckpointLayoutError` that names them) and builds the model.
- ``to_state_dict(model) -> dict[str, np.ndarray]``: the official tensors in the official order.
"""

import inspect
import os
from typing import Any

from flax import nnx

from rwkv_jax.checkpoint.hf import blinkdl_names_hint, is_hf_folder, read_hf
from rwkv_jax.checkpoint.layout import CheckpointLayoutError, describe_difference, key_difference
from rwkv_jax.checkpoint.pth import read_pth, write_pth
from rwkv_jax.checkpoint.safetensors_io import read_safetensors, write_safetensors
from rwkv_jax.finetune.state import apply_official_state, official_state_tensors, split_official_state
from rwkv_jax.models.family import Family, families, family_of
from rwkv_jax.wkv.impl import Impl


def official_families() -> tuple[Family, ...]:
    """The registered families that have an official checkpoint format."""
    return tuple(family for family in families() if family.converter is not None)


def detect(keys: list[str]) -> Family:
    """The family whose official layout the tensor names ``keys`` match.

    Raises:
      CheckpointLayoutError: no family matches (the message lists the missing and unexpected names relative
        to the closest known layout), or several do.
    """
    keys = list(keys)
    candidates = official_families()
    found = [family for family in candidates if family.converter.matches(keys)]
    if len(found) == 1:
        return found[0]
    if found:
        raise CheckpointLayoutError(f"checkpoint matches several layouts: {[f.title for f in found]}")
    differences = [
        (family, *key_difference(keys, family.converter.layout_keys(keys))) for family in candidates
    ]
    closest, missing, unexpected = min(differences, key=lambda d: len(d[1]) + len(d[2]))
    known = ", ".join(family.title for family in candidates)
    raise CheckpointLayoutError(
        f"unknown checkpoint layout (known: {known}); closest is {closest.title}: "
        f"{describe_difference(missing, unexpected)}{blinkdl_names_hint(keys)}"
    )


def _is_safetensors(path: str | os.PathLike) -> bool:
    return os.fspath(path).endswith(".safetensors")


def read_official(path: str | os.PathLike) -> tuple[dict, dict[str, Any]]:
    """``(tensors under BlinkDL names, load options the file implies)`` of a ``.pth``, a ``.safetensors``
    file or a Hugging Face folder; the tensors are memory-mapped views."""
    if is_hf_folder(path):
        return read_hf(path)
    if os.path.isdir(path):
        raise FileNotFoundError(f"{path} is a folder without config.json: not a Hugging Face checkpoint")
    return (read_safetensors(path) if _is_safetensors(path) else read_pth(path)), {}


def load_official(
    path: str | os.PathLike,
    dtype: str = "float32",
    wkv_impl: Impl | str = Impl.AUTO,
    **options: Any,
) -> nnx.Module:
    """Reads an official checkpoint (never executing code from it) and returns the model it holds.

    Args:
      path: a ``.pth`` or ``.safetensors`` file with BlinkDL's names, or a Hugging Face folder.
      dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``: the compute dtype and the storage dtype of the
        big matrices (embedding, head, linear layers: bfloat16 halves the model's memory); the other
        parameters stay float32 (:func:`rwkv_jax.models.common.weight_dtype`).
      wkv_impl: the WKV form the model uses.
      **options: passed to the detected family's ``from_state_dict``: ``param_dtype`` for all families
        (every parameter stored in it, e.g. ``"float32"`` for float32 weights with bfloat16 compute),
        ``group_norm_eps`` for Eagle/Finch (1e-5 reproduces rwkv.cpp's RWKV-5 logits). An option the
        detected family does not take is an error naming the options it does take. A Hugging Face
        folder implies some (RWKV-7: ``group_norm_eps`` from ``config.json``); given ones take precedence.
    """
    tensors, implied = read_official(path)
    tensors, states = split_official_state(tensors)  # a tuned state (RWKV-PEFT's time_state)
    family = detect(list(tensors))
    converter = family.converter
    accepted = set(inspect.signature(converter.from_state_dict).parameters) - {"tensors", "dtype", "wkv_impl"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"{family.title} checkpoints take no option(s) {unknown}; they take {sorted(accepted)}"
        )
    if "param_dtype" in accepted:  # None: the matrices in `dtype`, the rest float32 (models.common)
        options = {"param_dtype": None, **options}
    model = converter.from_state_dict(tensors, dtype=dtype, wkv_impl=wkv_impl, **{**implied, **options})
    return apply_official_state(model, states) if states else model


def save_official(model: nnx.Module, path: str | os.PathLike) -> None:
    """Writes ``model`` in BlinkDL's float32 layout, atomically (a temporary file, then a rename): a
    ``.safetensors`` file when ``path`` ends so, else a ``.pth``. A tuned WKV state
    (:mod:`rwkv_jax.finetune.state`) goes in as ``blocks.N.att.time_state``. For the Hugging Face folder see
    :func:`rwkv_jax.checkpoint.hf.save_hf`."""
    family = family_of(model)
    if family.converter is None:
        raise TypeError(f"{family.title} ({type(model).__name__}) has no official checkpoint layout")
    tensors = {**family.converter.to_state_dict(model), **official_state_tensors(model)}
    if _is_safetensors(path):
        write_safetensors(path, tensors, metadata={"format": "pt"})
    else:
        write_pth(path, tensors)
