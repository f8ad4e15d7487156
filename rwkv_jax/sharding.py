"""Logical axis names -> a device mesh: the mesh, the rules table and the shardings derived from them.

Parameters name their dimensions with logical axes (``vocab``, ``embed``, ``mlp``, ``heads``, ...; the
``logical_axes`` metadata of ``nnx.Param``). A rules table (from the config) maps each logical axis to a mesh
axis (``data``, ``fsdp``, ``tensor``), a tuple of them, or None (replicated); modules never name mesh axes.
The default mesh is every device on ``data`` (plain data parallelism; one device on this machine).
The ``context`` axis splits the time axis of sequences (context parallelism; :mod:`rwkv_jax.wkv.context`):
the batch's ``sequence`` rule names it, and the WKV recurrences split their time axis over it when the
mesh is set (``jax.set_mesh``) while the step is traced.
"""

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "context")
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    devices: Sequence[Any] | None = None,
    context: int = 1,
) -> Mesh:
    """A ``(data, fsdp, tensor, context)`` mesh over ``devices`` (default: all); one size may be -1 (the
    rest)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor, context]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(
            f"mesh sizes (data, fsdp, tensor, context) = {tuple(sizes)}: positive, at most one -1"
        )
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh sizes {tuple(sizes)}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {np.prod(sizes)} devices, "
            f"have {len(devices)}"
        )
    grid = np.array(devices, dtype=object).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(
    axes: Sequence[str | None] | None, shape: Sequence[int], rules: Rules, mesh: Mesh
) -> PartitionSpec:
    """The PartitionSpec of an array of ``shape`` whose dimensions have logical names ``axes``.

    A dimension stays replicated when its rule is None, when its size does not divide by the mesh axes'
    size, or when one of those mesh axes already shards an earlier dimension.
    """
    if axes is None:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape, strict=True):
        target = table.get(name) if name is not None else None
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        extent = int(np.prod([mesh.shape[a] for a in mesh_axes])) if mesh_axes else 1
        if not mesh_axes or used.intersection(mesh_axes) or size % extent:
            spec.append(None)
            continue
        used.update(mesh_axes)
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def logical_axes_of(state: nnx.State) -> Any:
    """The pure-dict tree of each parameter's ``logical_axes`` (None where a variable has none)."""
    tree = jax.tree.map(
        lambda v: v.get_metadata().get("logical_axes"), state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


def tree_shardings(logical_axes: Any, shapes: Any, rules: Rules, mesh: Mesh) -> Any:
    """NamedShardings for a pytree of arrays (``shapes``) given the matching pytree of logical axes."""

    def one(axes: tuple | None, leaf: Any) -> NamedSharding:
        return NamedSharding(mesh, logical_to_spec(axes, leaf.shape, rules, mesh))

    return jax.tree.map(one, logical_axes, shapes, is_leaf=lambda x: x is None or isinstance(x, tuple))


def batch_spec(rules: Rules, ndim: int = 2) -> PartitionSpec:
    """The PartitionSpec of a ``[B, ...]`` batch: ``B`` on the ``batch`` rule's mesh axes, the rest
    replicated (no mesh needed: a step traced under its mesh constrains slices of the batch with it)."""
    return PartitionSpec(dict(rules).get("batch"), *([None] * (ndim - 1)))


# The batch axis' PartitionSpec entry while a train step is traced (batch_sharded_activations), else None.
_ACTIVATION_BATCH: contextvars.ContextVar = contextvars.ContextVar("activation_batch", default=None)


@contextlib.contextmanager
def batch_sharded_activations(spec: PartitionSpec) -> Iterator[None]:
    """While tracing inside this context, :func:`keep_batch_sharded` pins the leading axis of activations to
    ``spec[0]`` (the batch's mesh axes; ``spec`` as :func:`batch_spec` gives it; needs the step traced under
    its mesh). Without it, with ``embed`` and ``batch`` both on ``fsdp``, XLA's partitioner may keep the
    weights sharded and gather the activations of every sequence of the ``fsdp`` group onto each device
    (docs/pod_scale.md: Finch 3.1B at fsdp 64 held the 64 sequences' activations and logits, 192 GiB)."""
    token = _ACTIVATION_BATCH.set(spec[0] if len(spec) else None)
    try:
        yield
    finally:
        _ACTIVATION_BATCH.reset(token)


def keep_batch_sharded(x: Any) -> Any:
    """``x [B, ...]`` (or a pytree of such) constrained to keep ``B`` on the batch's mesh axes, its other axes
    left to the partitioner; unchanged outside :func:`batch_sharded_activations`."""
    batch = _ACTIVATION_BATCH.get()
    if batch is None:
        return x
    unconstrained = PartitionSpec.UNCONSTRAINED

    def one(leaf: Any) -> Any:
        spec = PartitionSpec(batch, *([unconstrained] * (leaf.ndim - 1)))
        return jax.lax.with_sharding_constraint(leaf, spec)

    return jax.tree.map(one, x)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
    """The sharding of a ``[B, ...]`` batch on ``mesh``: :func:`batch_spec`."""
    return NamedSharding(mesh, batch_spec(rules, ndim))


def sequence_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """The sharding of ``[B, T]`` token inputs: ``B`` on the ``batch`` rule's mesh axes, ``T`` on the
    ``sequence`` rule's (``context``; a batch row of ``T + 1`` tokens stays whole in time until the step
    has cut its inputs)."""
    table = dict(rules)
    return NamedSharding(mesh, PartitionSpec(table.get("batch"), table.get("sequence")))
