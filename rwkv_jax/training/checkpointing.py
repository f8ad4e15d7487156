"""Training checkpoints with orbax: periodic and final saves, keep-N, resume from the latest complete one.

A checkpoint holds ``{"params", "opt_state"}`` at a step (the number of micro-batches already trained on);
the data order is a pure function of (seed, step), so nothing else is needed to continue a run exactly.
Saves are synchronous and, in a multi-process run, made by every process into one directory on storage that
all of them share. orbax writes each step into a temporary directory and renames it when complete, and only
directories that carry orbax's metadata file count as checkpoints: a run killed during a save leaves at
most a temporary or incomplete directory, which resuming ignores.
"""

import os
import pathlib
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from rwkv_jax.training import distributed

_COMPLETE_MARKER = "_CHECKPOINT_METADATA"


class Checkpoints:
    """The checkpoints of one run, under ``directory``.

    Args:
      directory: where step directories live (created if missing).
      keep: how many of the newest checkpoints to keep.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"ckpt.keep must be >= 1, got {keep}")
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False, create=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def complete_steps(self) -> list[int]:
        """Steps with a complete checkpoint, ascending."""
        return [
            s for s in self._manager.all_steps() if (self.directory / str(s) / _COMPLETE_MARKER).is_file()
        ]

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        steps = self.complete_steps()
        return steps[-1] if steps else None

    def save(self, step: int, params: Any, opt_state: Any) -> None:
        """Writes the checkpoint of ``step`` unless a complete one exists (an incomplete one is replaced)."""
        # Every process of a multi-process run decides on the same view of the directory.
        distributed.barrier(f"checkpoint {step}: look")
        if step in self.complete_steps():
            return
        leftover = self.directory / str(step)
        if leftover.exists():  # an incomplete directory of this step, left by a run killed mid-save
            if distributed.is_primary():
                shutil.rmtree(leftover)
            distributed.barrier(f"checkpoint {step}: leftover removed")
            self._manager.reload()
        items = ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state)
        )
        self._manager.save(step, args=items, force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, params_like: Any, opt_state_like: Any = None) -> tuple[Any, Any]:
        """Reads step ``step`` into the structure, dtypes and shardings of the ``*_like`` trees.

        Without ``opt_state_like`` only the parameters are read (evaluation); the second result is then None.
        """
        items = {"params": ocp.args.StandardRestore(jax.tree.map(_abstract, params_like))}
        if opt_state_like is not None:
            items["opt_state"] = ocp.args.StandardRestore(jax.tree.map(_abstract, opt_state_like))
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["params"], (restored["opt_state"] if opt_state_like is not None else None)

    def close(self) -> None:
        self._manager.close()


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
