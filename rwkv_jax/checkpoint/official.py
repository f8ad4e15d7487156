"""Load and save BlinkDL's official ``.pth`` checkpoints, whatever the RWKV version.

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

from rwkv_jax.checkpoint.layout import CheckpointLayoutError, describe_difference, key_difference
from rwkv_jax.checkpoint.pth import read_pth, write_pth
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
    family = detect(list(tensors))
    converter = family.converter
    accepted = set(inspect.signature(converter.from_state_dict).parameters) - {"tensors", "dtype", "wkv_impl"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"{family.title} checkpoints take no option(s) {unknown}; they take {sorted(accepted)}"
        )
    return converter.from_state_dict(tensors, dtype=dtype, wkv_impl=wkv_impl, **options)


def save_official(model: nnx.Module, path: str | os.PathLike) -> None:
    """Writes ``model`` as an official float32 ``.pth`` (atomically: a temporary file, then a rename)."""
    family = family_of(model)
    if family.converter is None:
        raise TypeError(f"{family.title} ({type(model).__name__}) has no official checkpoint layout")
    write_pth(path, family.converter.to_state_dict(model))
