"""The check, at the start of a training run, that a sharded mesh really shards the parameters.

Rules that leave a large matrix replicated (a logical axis mapped to None, or a size the mesh axis does not
divide) silently cost memory on every device: a 7B model that "fits" on paper then runs out of memory on the
pod. MaxText's habit: measure the fraction of parameter bytes left fully replicated under the actual
NamedShardings and refuse to start when it exceeds a small bound.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding


class ShardingError(ValueError):
    """The parameters' shardings leave more bytes replicated than the config allows."""


def replicated_fraction(shardings: Any, shapes: Any) -> tuple[float, list[tuple[str, int]]]:
    """The fraction of bytes of ``shapes`` (arrays or ShapeDtypeStructs) whose sharding replicates them fully.

    Returns (fraction in [0, 1], [(path, bytes) of each fully replicated leaf, largest first]).
    """
    leaves = jax.tree_util.tree_leaves_with_path(shapes)
    sharding_leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    total, replicated = 0, []
    for (path, leaf), sharding in zip(leaves, sharding_leaves, strict=True):
        size = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
        total += size
        if sharding.is_fully_replicated:
            replicated.append((jax.tree_util.keystr(path), size))
    replicated.sort(key=lambda item: -item[1])
    return (sum(size for _, size in replicated) / total if total else 0.0), replicated


# Mesh axes that split the inputs (batch rows, the time axis): parameters are replicated over them by design.
INPUT_AXES = ("data", "context")


def parameter_sharding_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes of size > 1 meant to split parameters (``fsdp``, ``tensor``: not :data:`INPUT_AXES`)."""
    return tuple(axis for axis, size in mesh.shape.items() if axis not in INPUT_AXES and size > 1)


def check_replicated(shardings: Any, shapes: Any, mesh: Mesh, max_fraction: float) -> float:
    """Raises ShardingError when more than ``max_fraction`` of the parameter bytes stay fully replicated.

    Off (returns 0.0) on a mesh with no parameter-sharding axis (data and context parallelism replicate by
    design)
    and when ``max_fraction`` >= 1. Returns the measured fraction.
    """
    axes = parameter_sharding_axes(mesh)
    if not axes or max_fraction >= 1:
        return 0.0
    fraction, replicated = replicated_fraction(shardings, shapes)
    if fraction > max_fraction:
        largest = ", ".join(f"{path} ({size / 2**20:.2f} MiB)" for path, size in replicated[:5])
        raise ShardingError(
            f"{fraction:.1%} of the parameter bytes are fully replicated on the mesh {dict(mesh.shape)} "
            f"(sharding axes {axes}); config.sharding_max_replicated allows {max_fraction:.1%}. "
            f"Largest replicated: {largest}. Map their logical axes to {axes} in config.sharding_rules, "
            "or choose sizes the mesh axes divide."
        )
    return fraction
