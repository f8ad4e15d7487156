"""Multi-process (multi-host) runs on JAX's own multi-controller runtime.

Every process runs the same program (``experiments/train.py`` with the same config) on its own devices; the
mesh spans the devices of all processes (``jax.devices()``), and jitted steps run as one SPMD program.
:func:`initialize` connects the processes: on TPU pods and on clusters that JAX recognises (Slurm, Open MPI,
Kubernetes) ``jax.distributed.initialize()`` finds the coordinator itself; elsewhere (several processes on
one machine, as the tests do) the config names it.

The rest are the few places where a multi-process run differs from a single-process one:

- inputs: every process computes the same global batch (the data order is a pure function of (seed, step))
  and hands JAX only the rows of its own devices (:func:`global_array`);
- outputs: values sharded across processes are gathered before they reach numpy (:func:`to_host`);
- files: one process writes logs and metrics (:func:`is_primary`); checkpoints are written by orbax from
  every process into one directory, which must be on storage that all hosts share.
"""

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding

from rwkv_jax.training.config import ConfigDict


def initialize(config: ConfigDict) -> None:
    """Connects this process to the others as ``config`` (``config.distributed``) says; call it first.

    Fields: ``initialize`` (False: a single-process run, nothing to do), ``coordinator_address``
    (``"host:port"`` of process 0, or empty to let JAX detect the cluster), ``num_processes``,
    ``process_id``, ``local_device_count`` (CPU only: how many devices this process exposes; 0 keeps
    JAX's default), ``heartbeat_timeout_seconds`` (a process silent that long counts as dead: the others
    exit with an error rather than wait forever) and ``initialization_timeout``. Must run before anything
    asks JAX for its devices.
    """
    if not config.initialize:
        return
    if config.local_device_count:
        jax.config.update("jax_num_cpu_devices", config.local_device_count)
    timeouts = dict(
        heartbeat_timeout_seconds=config.heartbeat_timeout_seconds,
        initialization_timeout=config.initialization_timeout,
    )
    if not config.coordinator_address:
        jax.distributed.initialize(**timeouts)
        return
    if not 0 <= config.process_id < config.num_processes:
        raise ValueError(
            f"distributed.process_id must be in [0, num_processes = {config.num_processes}); "
            f"got {config.process_id}"
        )
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
        **timeouts,
    )


def is_primary() -> bool:
    """Whether this is process 0, the one that writes logs, metrics and progress."""
    return jax.process_index() == 0


def global_array(value: np.ndarray, sharding: Sharding) -> jax.Array:
    """The global array ``value`` (the same on every process) laid out as ``sharding``: each process
    contributes the slices of its own devices only, so this works with one process or many."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def to_host(value: jax.Array) -> np.ndarray:
    """The whole of ``value`` as a numpy array on every process (a collective when it spans processes:
    every process must call it)."""
    if value.is_fully_addressable or value.is_fully_replicated:
        return np.asarray(value)
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))


def tree_to_host(tree: Any) -> Any:
    """:func:`to_host` of every leaf (a collective in a multi-process run)."""
    return jax.tree.map(to_host, tree)


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
