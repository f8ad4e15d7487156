"""The blocks of a model as ``jax.lax.scan`` over layers, so the compiled program does not grow with depth.

``model.blocks`` holds single blocks and, in the layout training steps use (:mod:`rwkv_jax.models.
layer_stack`), :class:`~rwkv_jax.models.layer_stack.StackedBlocks` whose parameters are stored stacked: such
a stack is scanned as it is. Single blocks (the layout a family builds and checkpoints load) are split
(``nnx.split``: one graphdef, one state per block) and each run of consecutive blocks with the same
structure is stacked inside the call and scanned (one scan step merges the layer's slice back into a block
and calls it). Blocks whose structure differs from their neighbours' (RWKV-4/6's block 0 holds ``ln0``, an
ablation or adapter on some layers only) are called one by one, so such a model still works and only the
differing layers add to the program.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from rwkv_jax.models.layer_stack import StackedBlocks, equal_structure_runs, layer_count

Carry = TypeVar("Carry")
# step(block, carry, layer_state) -> (carry, new layer_state); carry keeps its structure, shapes and dtypes.
Step = Callable[[nnx.Module, Any, Any], tuple[Any, Any]]
# A block called alone, or (graphdef, parameters stacked on a leading layer axis, number of layers).
Group = nnx.Module | tuple[Any, Any, int]


def _stack(trees: Sequence[Any]) -> Any:
    """Trees of the same structure -> one tree whose leaves gain a leading axis of ``len(trees)``."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _groups(blocks: Sequence[nnx.Module], scan: bool) -> Iterator[Group]:
    """The blocks in order as groups: a stored stack whole; with ``scan``, each run of two or more single
    blocks of one structure stacked here; every other block alone."""
    start = 0
    while start < len(blocks):
        if isinstance(blocks[start], StackedBlocks):
            graphdef, params = nnx.split(blocks[start].layers)
            yield graphdef, params, blocks[start].count
            start += 1
            continue
        stop = start + 1
        while stop < len(blocks) and not isinstance(blocks[stop], StackedBlocks):
            stop += 1
        singles, start = blocks[start:stop], stop
        if not scan:
            yield from singles
            continue
        for a, b in equal_structure_runs(singles):
            if b - a == 1:
                yield singles[a]
            else:
                yield nnx.split(singles[a])[0], _stack([nnx.split(block)[1] for block in singles[a:b]]), b - a


def run_layers(
    blocks: Sequence[nnx.Module],
    carry: Carry,
    states: Sequence[Any],
    step: Step,
    *,
    scan: bool = True,
    keep_products: bool = True,
) -> tuple[Carry, tuple[Any, ...]]:
    """``step`` through ``blocks`` in order with their layer ``states`` (one per layer: a stored stack of
    ``count`` layers takes ``count``); returns the carry and the new states, one per layer.

    ``scan=True`` scans each run of two or more single blocks with equal ``nnx.split`` graphdefs (a Python
    loop otherwise: the same numbers, a program that grows with the number of layers); a stored stack is
    always scanned. ``step`` must leave the carry's structure, shapes and dtypes as they were (``lax.scan``'s
    rule) within a run. ``keep_products``: a scanned run's backward pass keeps only the matrix products and
    recomputes the elementwise work; False where ``step`` is already rematerialised (a checkpoint inside
    this one would keep more than either alone).
    """
    layers = sum(layer_count(block) for block in blocks)
    if layers != len(states):
        raise ValueError(f"{layers} layers but {len(states)} layer states")
    new_states: list[Any] = []
    for group in _groups(blocks, scan):
        first = len(new_states)
        if isinstance(group, nnx.Module):
            carry, layer_state = step(group, carry, states[first])
            new_states.append(layer_state)
            continue
        graphdef, params, count = group

        def body(c: Any, layer: tuple[Any, Any], graphdef: Any = graphdef) -> tuple[Any, Any]:
            layer_params, layer_state = layer
            return step(nnx.merge(graphdef, layer_params), c, layer_state)

        # The backward pass keeps the body's matrix products and recomputes its elementwise work: a scan
        # stores every residual of every layer in stacked buffers (zero-filled, written and read back one
        # slice per layer), so saving fewer is faster here; values and gradients are bit-equal
        # (docs/speed.md, "Training").
        if keep_products:
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
        carry, stacked = jax.lax.scan(body, carry, (params, _stack(states[first : first + count])))
        new_states.extend(jax.tree.map(lambda a, k=k: a[k], stacked) for k in range(count))
    return carry, tuple(new_states)
