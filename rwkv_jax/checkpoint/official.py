"""Load and save BlinkDL's official ``.pth`` checkpoints, whatever the RWKV version.

Each family has a converter module in :data:`CONVERTERS`; the version of a file is found from its tensor
names alone, and nothing is built before the names and shapes are checked. A converter module provides:

- ``FAMILY``: a name for messages (``"RWKV-4"``); ``MODEL``: the model class it builds and saves.
- ``matches(keys) -> bool``: whether the tensor names are this family's (a cheap signature test).
- ``layout_keys(keys) -> list[str]``: the names this family's file with as many blocks would hold; used
  to tell a user how an unknown file differs from the closest known layout.
- ``from_state_dict(tensors, *, dtype, wkv_impl, **options) -> model``: checks names and shapes (raising
  :class:`CheckpointLayoutError` that names them) and builds the model.
- ``to_state_dict(model) -> dict[str, np.ndarray]``: the official tensors in the official order.
"""

import inspect
import os
from types import ModuleType
from typing import Any

from flax import nnx

from rwkv_jax.checkpoint import convert_v4, convert_v6, convert_v7
from rwkv_jax.checkpoint.layout import CheckpointLayoutError, describe_difference, key_difference
from rwkv_jax.checkpoint.pth import read_pth, write_pth
from rwkv_jax.wkv.impl import Impl

CONVERTERS: tuple[ModuleType, ...] = (convert_v4, convert_v6, convert_v7)


def detect(keys: list[str]) -> ModuleType:
    """The converter whose layout the tensor names ``keys`` match.

    Raises:
      CheckpointLayoutError: no family matches (the message lists the missing and unexpected names relative
        to the closest known layout), or several do.
    """
    keys = list(keys)
    found = [converter for converter in CONVERTERS if converter.matches(keys)]
    if len(found) == 1:
        return found[0]
    if found:
        raise CheckpointLayoutError(f"checkpoint matches several layouts: {[c.FAMILY for c in found]}")
    differences = [
        (converter, *key_difference(keys, converter.layout_keys(keys))) for converter in CONVERTERS
    ]
    closest, missing, unexpected = min(differences, key=lambda d: len(d[1]) + len(d[2]))
    known = ", ".join(converter.FAMILY for converter in CONVERTERS)
    raise CheckpointLayoutError(
        f"unknown checkpoint layout (known: {known}); closest is {closest.FAMILY}: "
        f"{describe_difference(missing, unexpected)}"
    )


def load_official(
    path: str | os.PathLike,
    dtype: str = "float32",
    wkv_impl: Impl | str = Impl.AUTO,
    **options: Any,
) -> nnx.Module:
    """Reads an official ``.pth`` (never executing code from it) and returns the model it holds.

    Args:
      path: the checkpoint file.
      dtype: compute dtype of the model (``"float32"`` or ``"bfloat16"``).
      wkv_impl: the WKV form the model uses.
      **options: passed to the detected family's ``from_state_dict``: ``param_dtype`` for all families,
        ``group_norm_eps`` for Eagle/Finch (1e-5 reproduces rwkv.cpp's RWKV-5 logits). An option the
        detected family does not take is an error naming the options it does take.
    """
    tensors = read_pth(path)
    converter = detect(list(tensors))
    accepted = set(inspect.signature(converter.from_state_dict).parameters) - {"tensors", "dtype", "wkv_impl"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"{converter.FAMILY} checkpoints take no option(s) {unknown}; they take {sorted(accepted)}"
        )
    return converter.from_state_dict(tensors, dtype=dtype, wkv_impl=wkv_impl, **options)


def save_official(model: nnx.Module, path: str | os.PathLike) -> None:
    """Writes ``model`` as an official float32 ``.pth`` (atomically: a temporary file, then a rename)."""
    converter = next((c for c in CONVERTERS if isinstance(model, c.MODEL)), None)
    if converter is None:
        known = ", ".join(c.MODEL.__name__ for c in CONVERTERS)
        raise TypeError(f"no official layout for {type(model).__name__}; known models: {known}")
    write_pth(path, converter.to_state_dict(model))
