"""Block parameters stored stacked on a leading ``layers`` axis: the layout training steps are compiled on.

A model built by a family stores its blocks one by one (``model.blocks[i]``: what checkpoints, sharding
rules, adapters and ablation switches address). :func:`stack_layers` gives a copy whose every run of two or
more consecutive blocks with one structure (equal ``nnx.split`` graphdefs) is one :class:`StackedBlocks`:
a single block whose arrays carry a leading axis of the run's length. :func:`rwkv_jax.models.layer_scan.
run_layers` scans such a run without stacking anything, so a training step (parameters, gradients and the
optimiser's update) holds one array per parameter of a block whatever the depth, and its compile time does
not grow with the number of layers. :func:`unstack_layers` gives the per-block layout back, bit for bit.

The stacked arrays' ``logical_axes`` metadata gains ``layers`` in front (replicated unless a sharding rule
names it), so that sharding and weight-decay rules see the stacked shapes; paths become
``blocks.<k>.layers.<name>`` where ``k`` counts the stored items (single blocks and stacks).
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

LAYERS_AXIS = "layers"  # the logical name of a stacked parameter's leading axis


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _with_axes(variable: nnx.Variable, value: Any, axes: tuple | None) -> nnx.Variable:
    """A copy of ``variable`` holding ``value``, its ``logical_axes`` set to ``axes`` (absent: None)."""
    copy = variable.replace(value=value)
    if axes is not None:
        copy.set_metadata("logical_axes", axes)
    return copy


def _stacked_variable(*variables: nnx.Variable) -> nnx.Variable:
    values = [v.get_value() for v in variables]
    if isinstance(values[0], jax.ShapeDtypeStruct):  # an abstract model (nnx.eval_shape): shapes only
        stacked = jax.ShapeDtypeStruct((len(values), *values[0].shape), values[0].dtype)
    else:
        stacked = jnp.stack(values)
    axes = variables[0].get_metadata().get("logical_axes")
    return _with_axes(variables[0], stacked, None if axes is None else (LAYERS_AXIS, *axes))


def _layer_variable(variable: nnx.Variable, index: int) -> nnx.Variable:
    value = variable.get_value()
    if isinstance(value, jax.ShapeDtypeStruct):
        layer = jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
    else:
        layer = value[index]
    axes = variable.get_metadata().get("logical_axes")
    return _with_axes(variable, layer, None if axes is None else tuple(axes[1:]))


class StackedBlocks(nnx.Module):
    """``count`` consecutive blocks of one structure as one block whose arrays are ``[count, ...]``.

    Attributes:
      layers: the block; each of its arrays is the blocks' arrays stacked on a new leading axis.
      count: the number of blocks (the stacked axis' length).
    """

    def __init__(self, blocks: Sequence[nnx.Module]):
        graphdef, *_ = nnx.split(blocks[0])
        if len(blocks) < 2 or any(nnx.split(block)[0] != graphdef for block in blocks):
            raise ValueError("StackedBlocks needs two or more blocks of one structure (equal graphdefs)")
        states = [nnx.split(block)[1] for block in blocks]
        self.layers = nnx.merge(graphdef, jax.tree.map(_stacked_variable, *states, is_leaf=_is_variable))
        self.count = len(blocks)

    def unstacked(self) -> list[nnx.Module]:
        """The blocks one by one: each array the stacked one's slice, its metadata as before stacking."""
        graphdef, state = nnx.split(self.layers)

        def layer(i: int) -> nnx.Module:
            sliced = jax.tree.map(lambda v: _layer_variable(v, i), state, is_leaf=_is_variable)
            return nnx.merge(graphdef, sliced)

        return [layer(i) for i in range(self.count)]


def layer_count(item: nnx.Module) -> int:
    """How many layers a stored item of ``model.blocks`` holds (a block: 1)."""
    return item.count if isinstance(item, StackedBlocks) else 1


def equal_structure_runs(blocks: Sequence[nnx.Module]) -> list[tuple[int, int]]:
    """``[start, stop)`` of each maximal run of consecutive blocks with equal ``nnx.split`` graphdefs."""
    graphdefs = [nnx.split(block)[0] for block in blocks]
    runs, start = [], 0
    for i in range(1, len(graphdefs) + 1):
        if i == len(graphdefs) or graphdefs[i] != graphdefs[start]:
            runs.append((start, i))
            start = i
    return runs


def layer_paths(path: tuple, runs: Sequence[tuple[int, int]]) -> list[tuple]:
    """The per-layer variable paths that the variable at ``path`` of :func:`stack_layers`'s layout holds, in
    layer order; ``runs`` are the per-layer blocks' :func:`equal_structure_runs`. A stack's
    ``("blocks", k, "layers", *rest)`` holds ``("blocks", a + j, *rest)`` for each layer ``a + j`` of run
    ``k``; a single block's ``("blocks", k, *rest)`` is its layer's; any other path is itself."""
    if path[:1] != ("blocks",):
        return [path]
    start, stop = runs[path[1]]
    if stop - start == 1:
        return [("blocks", start, *path[2:])]
    return [("blocks", start + j, *path[3:]) for j in range(stop - start)]


def _copy_with_blocks(model: nnx.Module, items: Sequence[nnx.Module]) -> nnx.Module:
    copy = nnx.merge(*nnx.split(model))  # new module objects around the same arrays; ``model`` is untouched
    copy.blocks = nnx.List(items)
    return copy


def stack_layers(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` whose runs of two or more equal-structured consecutive blocks are
    :class:`StackedBlocks` (the others stay single); the same function of tokens and state. Works on an
    abstract model (``nnx.eval_shape``); a model already stacked is returned as is."""
    blocks = list(model.blocks)
    if any(isinstance(block, StackedBlocks) for block in blocks):
        return model
    runs = equal_structure_runs(blocks)
    return _copy_with_blocks(
        model, [blocks[a] if b - a == 1 else StackedBlocks(blocks[a:b]) for a, b in runs]
    )


def unstack_layers(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` with one block per layer (the layout of a family's own constructor); a model
    whose blocks are not stacked is returned as is."""
    items = list(model.blocks)
    if not any(isinstance(item, StackedBlocks) for item in items):
        return model
    blocks = [b for item in items for b in (item.unstacked() if isinstance(item, StackedBlocks) else [item])]
    return _copy_with_blocks(model, blocks)
