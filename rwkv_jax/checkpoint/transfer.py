"""Moving tensors between an official state dict and a model's parameters, for every model family.

An official tensor and the model parameter it feeds differ only in layout: a linear layer's ``weight
[out, in]`` is the transpose of our ``kernel [in, out]``; every other tensor is a reshape (e.g. ``time_mix
[1, 1, C]`` <-> ``[C]``). A family supplies how its parameter paths are named officially and which names are
linear weights.
"""

import mmap
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from rwkv_jax.checkpoint.layout import check_tensors
from rwkv_jax.host_memory import aligned_empty

OfficialName = Callable[[tuple], str]  # parameter path -> official tensor name
IsLinear = Callable[[str], bool]  # official name -> whether it is a linear weight (stored transposed)


def dotted_name(path: tuple, skip: frozenset[str] = frozenset()) -> str:
    """The official name of a parameter path: its parts joined by dots, ``kernel`` spelt ``weight``, the
    model-only parts in ``skip`` left out (``blocks/0/att/key/kernel``: ``blocks.0.att.key.weight``)."""
    parts = [str(p) for p in path if p not in skip]
    if parts[-1] == "kernel":
        parts[-1] = "weight"
    return ".".join(parts)


def linear_weights(modules: frozenset[str]) -> IsLinear:
    """The test "is ``name`` the ``weight`` of one of ``modules``" (torch Linears, stored transposed)."""

    def is_linear(name: str) -> bool:
        parts = name.split(".")
        return parts[-1] == "weight" and len(parts) >= 2 and parts[-2] in modules

    return is_linear


def fill_model(
    abstract: nnx.Module,
    tensors: Mapping[str, np.ndarray],
    official_name: OfficialName,
    is_linear: IsLinear,
) -> nnx.Module:
    """``abstract`` (from ``nnx.eval_shape``) with every parameter set from its official tensor, cast to
    the dtype the model stores that parameter in (matrices and vectors may differ: ``weight_dtype``).

    Every parameter is a copy (never an alias of a memory-mapped file); the mapped pages of each tensor are
    released once it is copied (:func:`release_mapped`) and the biggest tensors go first (a transpose needs
    a second buffer while it runs), so the memory of loading peaks near one copy of the weights, not two."""
    graphdef, params = nnx.split(abstract)
    flat = sorted(nnx.to_flat_state(params), key=lambda item: -item[1].get_value().size)
    for path, variable in flat:
        name = official_name(path)
        source = np.asarray(tensors[name])
        target = variable.get_value()
        variable.set_value(_parameter(source.T if is_linear(name) else source.reshape(target.shape), target))
        release_mapped(source)
    return nnx.merge(graphdef, params)


def _parameter(source: np.ndarray, target: jax.ShapeDtypeStruct) -> jax.Array:
    """``source`` (a view of the file in the parameter's layout) copied by numpy into an aligned host buffer
    in ``target``'s dtype, which ``device_put`` shares on CPU: no XLA program per shape (their compiler
    memory stays out of a decoding process's peak), one copy."""
    host = aligned_empty(target.shape, target.dtype)
    np.copyto(host, source, casting="unsafe")  # float32 -> bfloat16 rounds to nearest even, as XLA does
    return jax.device_put(host)


def release_mapped(array: np.ndarray) -> None:
    """Drops the whole pages under ``array`` from this process's resident memory when it is a C-contiguous
    view of a memory map (``madvise(MADV_DONTNEED)``); anything else is left alone. The array stays valid:
    its pages are read from the file again on the next access (a change made in place to a copy-on-write
    mapping is lost)."""
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is None or not array.flags.c_contiguous or base.closed:
        return
    start = array.ctypes.data - np.frombuffer(base, np.uint8).ctypes.data
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only: a neighbour may share the edges
    stop = (start + array.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if stop > first:
        base.madvise(mmap.MADV_DONTNEED, first, stop - first)


def model_from_tensors(
    model_class: type,
    config: Any,
    tensors: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]],
    official_name: OfficialName,
    is_linear: IsLinear,
    family: str,
) -> nnx.Module:
    """Checks ``tensors`` against ``shapes`` (names, shapes, dtypes; :class:`CheckpointLayoutError` names
    the first mismatch), then builds ``model_class(config)`` abstractly (no random init) and fills it."""
    check_tensors(tensors, shapes, family)
    abstract = nnx.eval_shape(lambda: model_class(config, rngs=nnx.Rngs(0)))
    return fill_model(abstract, tensors, official_name, is_linear)


def official_tensors(
    model: nnx.Module,
    official_name: OfficialName,
    is_linear: IsLinear,
    shapes: Mapping[str, tuple[int, ...]],
    dtype: np.dtype | str | None,
) -> dict[str, np.ndarray]:
    """The official state dict of ``model``, ordered as ``shapes``; ``dtype=None`` keeps parameter dtypes.

    A parameter the layout has no place for is an error (never dropped silently: an adapter's would be).
    """
    params = {
        official_name(path): np.asarray(variable.get_value())
        for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    extra = [name for name in params if name not in shapes]
    if extra:
        raise ValueError(
            f"the official layout has no place for the parameters {extra[:4]} ({len(extra)} in all); "
            "a model with adapters is saved after rwkv_jax.finetune.lora.merge_adapters(model)"
        )
    tensors = {}
    for name, shape in shapes.items():
        value = params[name]
        tensor = np.ascontiguousarray(value.T if is_linear(name) else value.reshape(shape))
        tensors[name] = tensor if dtype is None else tensor.astype(dtype)
    return tensors
