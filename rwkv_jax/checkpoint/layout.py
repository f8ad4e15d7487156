"""Checks of a checkpoint's tensor names and shapes against an expected layout, with errors that name them."""

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# How many names an error message lists before it summarises the rest.
MAX_NAMES_SHOWN = 8


class CheckpointLayoutError(ValueError):
    """A checkpoint's tensors do not match the layout of its model family (names, shapes or dtypes)."""


def block_count(keys: Iterable[str]) -> int:
    """Blocks in a BlinkDL state dict: 1 + the largest ``N`` of the ``blocks.N.*`` keys (0 if none)."""
    indices = [int(k.split(".")[1]) for k in keys if k.startswith("blocks.") and k.split(".")[1].isdigit()]
    return max(indices, default=-1) + 1


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    more = len(names) - MAX_NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def key_difference(keys: Iterable[str], expected: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(missing, unexpected)``: expected names absent from ``keys`` and names of ``keys`` not expected."""
    keys, expected = list(keys), list(expected)
    present, wanted = set(keys), set(expected)
    return [k for k in expected if k not in present], [k for k in keys if k not in wanted]


def describe_difference(missing: Sequence[str], unexpected: Sequence[str]) -> str:
    """A one-line account of missing and unexpected names."""
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s): {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {_names(unexpected)}")
    return "; ".join(parts)


def check_keys(keys: Iterable[str], expected: Iterable[str], family: str) -> None:
    """Raises :class:`CheckpointLayoutError` unless ``keys`` and ``expected`` hold the same names."""
    missing, unexpected = key_difference(keys, expected)
    if missing or unexpected:
        difference = describe_difference(missing, unexpected)
        raise CheckpointLayoutError(f"not a complete {family} checkpoint: {difference}")


def check_tensors(
    tensors: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], family: str
) -> None:
    """Raises :class:`CheckpointLayoutError` for a missing or unexpected name, a wrong shape or dtype."""
    check_keys(tensors.keys(), shapes.keys(), family)
    for name, shape in shapes.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointLayoutError(
                f"{family} checkpoint: {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}"
            )
        if not np.issubdtype(tensor.dtype, np.floating) and tensor.dtype.name != "bfloat16":
            raise CheckpointLayoutError(
                f"{family} checkpoint: {name} has dtype {tensor.dtype}, expected floating point"
            )


def tensor_shape(tensors: Mapping[str, np.ndarray], name: str, ndim: int, family: str) -> tuple[int, ...]:
    """The shape of ``tensors[name]``; raises :class:`CheckpointLayoutError` unless it has ``ndim`` axes."""
    shape = tuple(tensors[name].shape)
    if len(shape) != ndim:
        message = f"{family} checkpoint: {name} has shape {shape}, expected {ndim} dimensions"
        raise CheckpointLayoutError(message)
    return shape
