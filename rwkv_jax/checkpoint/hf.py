"""Hugging Face-format checkpoint folders (config.json plus weights): read memory-mapped, written atomically.

A folder holds ``model.safetensors``, or shards listed in ``model.safetensors.index.json``, or (older saves)
``pytorch_model.bin`` / its index, read with the torch-free ``.pth`` reader. ``config.json``'s
``model_type`` and the tensor names pick the layout module (:data:`LAYOUTS`: flash-linear-attention's, or
RWKV-block's, which shares fla's model_type), which maps the tensors to BlinkDL names; the family's converter
then builds the model as for a ``.pth``. Nothing in the folder is executed (a config's
``auto_map`` naming custom code is ignored).
"""

import json
import os
import pathlib
import secrets
import shutil
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
from flax import nnx

from rwkv_jax.checkpoint import hf_rwkv7, hf_rwkv_block
from rwkv_jax.checkpoint.layout import CheckpointLayoutError
from rwkv_jax.checkpoint.pth import read_pth
from rwkv_jax.checkpoint.safetensors_io import read_safetensors, write_safetensors
from rwkv_jax.models.family import family_of

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
# The modules mapping a layout to BlinkDL names and back; each has NAME, MODEL_TYPE (config.json's), FAMILY,
# matches(tensor names), to_blinkdl and from_blinkdl. Where two share a model_type, the names decide.
LAYOUTS: tuple[ModuleType, ...] = (hf_rwkv7, hf_rwkv_block)
# Weight files in the order they are looked for: (single file, index of shards, reader).
_WEIGHT_FILES = (
    (WEIGHTS, "model.safetensors.index.json", read_safetensors),
    ("pytorch_model.bin", "pytorch_model.bin.index.json", read_pth),
)


def is_hf_folder(path: str | os.PathLike) -> bool:
    """True for a folder holding a ``config.json``."""
    return (pathlib.Path(path) / CONFIG).is_file()


def _read_json(path: pathlib.Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointLayoutError(f"{path} is not UTF-8 JSON: {e}") from None
    if not isinstance(value, dict):
        raise CheckpointLayoutError(f"{path} holds {type(value).__name__}, expected a JSON object")
    return value


def _read_shards(folder: pathlib.Path, index: pathlib.Path, reader) -> dict[str, np.ndarray]:
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise CheckpointLayoutError(f"{index}: expected a 'weight_map' of tensor name -> file name")
    tensors: dict[str, np.ndarray] = {}
    for name in sorted(set(weight_map.values())):
        if pathlib.Path(name).name != name:  # a shard must sit in the folder, never elsewhere
            raise CheckpointLayoutError(f"{index}: shard {name!r} is not a file name in {folder}")
        shard = reader(folder / name)
        listed = {key for key, file in weight_map.items() if file == name}
        if set(shard) != listed:
            raise CheckpointLayoutError(
                f"{folder / name} holds {sorted(set(shard) ^ listed)[:8]} unlike {index.name} says"
            )
        tensors.update(shard)
    return tensors


def read_hf_tensors(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: array}`` of the weights in ``folder`` (memory-mapped), under their Hugging Face names."""
    folder = pathlib.Path(folder)
    for single, index, reader in _WEIGHT_FILES:
        if (folder / single).is_file():
            return reader(folder / single)
        if (folder / index).is_file():
            return _read_shards(folder, folder / index, reader)
    looked = ", ".join(name for pair in _WEIGHT_FILES for name in pair[:2])
    raise FileNotFoundError(f"{folder} holds no weights: looked for {looked}")


def read_hf(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(BlinkDL tensors, load options)`` of the Hugging Face folder ``folder``.

    Raises:
      CheckpointLayoutError: an unknown ``model_type``, settings the layout cannot represent, or tensors
        that do not match it (the message names the missing and unexpected keys).
      FileNotFoundError: no weight file in the folder.
    """
    folder = pathlib.Path(folder)
    hf_config = _read_json(folder / CONFIG)
    model_type = hf_config.get("model_type")
    candidates = [layout for layout in LAYOUTS if layout.MODEL_TYPE == model_type]
    if not candidates:
        known = sorted({layout.MODEL_TYPE for layout in LAYOUTS})
        raise CheckpointLayoutError(
            f"{folder / CONFIG}: model_type {model_type!r} has no Hugging Face layout here; known: {known}"
        )
    tensors = read_hf_tensors(folder)
    # Names of neither layout: the first one's check names what is missing and unexpected.
    layout = next((layout for layout in candidates if layout.matches(tensors)), candidates[0])
    return layout.to_blinkdl(tensors, hf_config)


def _layout_of(model: nnx.Module, name: str) -> ModuleType:
    family = family_of(model)
    for layout in LAYOUTS:
        if layout.FAMILY == family.name and layout.NAME == name:
            return layout
    known = sorted(f"{layout.NAME} ({layout.FAMILY})" for layout in LAYOUTS)
    raise ValueError(f"{family.title} has no Hugging Face layout {name!r}; known: {known}")


def save_hf(
    model: nnx.Module, folder: str | os.PathLike, dtype: str = "float32", layout: str = hf_rwkv7.NAME
) -> None:
    """Writes ``model`` as a Hugging Face folder (``config.json``, ``model.safetensors`` in ``dtype``).

    ``layout``: ``"fla"`` (flash-linear-attention's names, as the ``fla-hub/rwkv7-*`` releases) or
    ``"rwkv-block"`` (BlinkDL's names with RWKV-block's config, as the ``RWKV/v7-Goose-*-HF`` releases).

    Atomic: the files are written into a temporary folder beside ``folder``, which is then renamed to it.
    ``folder`` must not exist or be empty (a non-empty one is never overwritten: FileExistsError).
    """
    folder = pathlib.Path(folder).absolute()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not an empty folder; save to a new folder")
    hf_config, tensors = _layout_of(model, layout).from_blinkdl(model, dtype)
    temporary = folder.with_name(f".{folder.name}.{secrets.token_hex(6)}.tmp")
    temporary.mkdir(parents=True)
    try:
        write_safetensors(temporary / WEIGHTS, tensors, metadata={"format": "pt"})
        (temporary / CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        if folder.exists():
            folder.rmdir()  # empty, checked above
        os.replace(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def blinkdl_names_hint(keys: Mapping[str, Any]) -> str:
    """A hint for a single file holding Hugging Face names, which need their folder's config.json."""
    if any(key.startswith("model.layers.") for key in keys):
        return " (these are Hugging Face names: load the folder with its config.json instead of the file)"
    return ""
