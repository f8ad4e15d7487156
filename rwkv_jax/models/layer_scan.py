"""The blocks of a model as ``jax.lax.scan`` over layers, so the compiled program does not grow with depth.

Parameters stay stored per layer (``model.blocks[i]``, what the checkpoints, sharding rules, adapters and
ablation switches address); inside the call each run of consecutive blocks with the same structure is split
(``nnx.split``: one graphdef, one state per block), the states are stacked along a new leading layer axis and
one scan step merges the layer's slice back into a block and calls it. Blocks whose structure differs from
their neighbours' (RWKV-4/6's block 0 holds ``ln0``, an ablation or adapter on some layers only) are called
one by one, so such a model still works and only the differing layers add to the program.
"""

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

Carry = TypeVar("Carry")
# step(block, carry, layer_state) -> (carry, new layer_state); carry keeps its structure, shapes and dtypes.
Step = Callable[[nnx.Module, Any, Any], tuple[Any, Any]]


def _stack(trees: Sequence[Any]) -> Any:
    """Trees of the same structure -> one tree whose leaves gain a leading axis of ``len(trees)``."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _runs(graphdefs: Sequence[Any]) -> list[tuple[int, int]]:
    """``[start, stop)`` of each maximal run of equal consecutive graphdefs."""
    runs, start = [], 0
    for i in range(1, len(graphdefs) + 1):
        if i == len(graphdefs) or graphdefs[i] != graphdefs[start]:
            runs.append((start, i))
            start = i
    return runs


def run_layers(
    blocks: Sequence[nnx.Module], carry: Carry, states: Sequence[Any], step: Step, *, scan: bool = True
) -> tuple[Carry, tuple[Any, ...]]:
    """``step`` through ``blocks`` in order with their layer ``states``; returns the carry and new states.

    ``scan=True`` scans each run of two or more blocks with equal ``nnx.split`` graphdefs (a Python loop
    otherwise: the same numbers, a program that grows with the number of layers). ``step`` must leave the
    carry's structure, shapes and dtypes as they were (``lax.scan``'s rule) within a run.
    """
    if len(blocks) != len(states):
        raise ValueError(f"{len(blocks)} blocks but {len(states)} layer states")
    splits = [nnx.split(block) for block in blocks]
    runs = _runs([graphdef for graphdef, _ in splits]) if scan else [(i, i + 1) for i in range(len(blocks))]
    new_states: list[Any] = []
    for start, stop in runs:
        if stop - start == 1:
            carry, layer_state = step(blocks[start], carry, states[start])
            new_states.append(layer_state)
            continue
        graphdef = splits[start][0]

        def body(c: Any, layer: tuple[Any, Any], graphdef: Any = graphdef) -> tuple[Any, Any]:
            params, layer_state = layer
            return step(nnx.merge(graphdef, params), c, layer_state)

        layers = (_stack([params for _, params in splits[start:stop]]), _stack(states[start:stop]))
        carry, stacked = jax.lax.scan(body, carry, layers)
        new_states.extend(jax.tree.map(lambda a, k=k: a[k], stacked) for k in range(stop - start))
    return carry, tuple(new_states)
