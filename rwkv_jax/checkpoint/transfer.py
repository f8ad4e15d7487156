"""Moving tensors between an official state dict and a model's parameters, for every model family.

An official tensor and the model parameter it feeds differ only in layout: a linear layer's ``weight
[out, in]`` is the transpose of our ``kernel [in, out]``; every other tensor is a reshape (e.g. ``time_mix
[1, 1, C]`` <-> ``[C]``). A family supplies how its parameter paths are named officially and which names are
linear weights.
"""

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

OfficialName = Callable[[tuple], str]  # parameter path -> official tensor name
IsLinear = Callable[[str], bool]  # official name -> whether it is a linear weight (stored transposed)


def fill_model(
    abstract: nnx.Module,
    tensors: Mapping[str, np.ndarray],
    official_name: OfficialName,
    is_linear: IsLinear,
    param_dtype: str,
) -> nnx.Module:
    """``abstract`` (from ``nnx.eval_shape``) with every parameter set from its official tensor."""
    graphdef, params = nnx.split(abstract)
    for path, variable in nnx.to_flat_state(params):
        name = official_name(path)
        tensor = np.asarray(tensors[name])
        tensor = tensor.T if is_linear(name) else tensor.reshape(variable.get_value().shape)
        variable.set_value(jnp.asarray(tensor, param_dtype))
    return nnx.merge(graphdef, params)


def official_tensors(
    model: nnx.Module,
    official_name: OfficialName,
    is_linear: IsLinear,
    shapes: Mapping[str, tuple[int, ...]],
    dtype: np.dtype | str | None,
) -> dict[str, np.ndarray]:
    """The official state dict of ``model``, ordered as ``shapes``; ``dtype=None`` keeps parameter dtypes."""
    params = {
        official_name(path): np.asarray(variable.get_value())
        for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    tensors = {}
    for name, shape in shapes.items():
        value = params[name]
        tensor = np.ascontiguousarray(value.T if is_linear(name) else value.reshape(shape))
        tensors[name] = tensor if dtype is None else tensor.astype(dtype)
    return tensors
