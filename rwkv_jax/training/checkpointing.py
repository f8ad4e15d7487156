"""Training checkpoints with orbax: periodic and final saves, keep-N, resume from the newest good one.

A checkpoint holds ``{"params", "opt_state"}`` at a step (the number of micro-batches already trained on);
the data order is a pure function of (seed, step), so nothing else is needed to continue a run exactly.
Saves are synchronous and, in a multi-process run, made by every process into one directory on storage that
all of them share. orbax writes each step into a temporary directory and renames it when complete, and only
directories that carry orbax's metadata file count as checkpoints: a run killed during a save leaves at
most a temporary or incomplete directory, which resuming ignores.

After orbax's rename, ``checksums.json`` in the step directory records the size and SHA-256 of every file.
Resuming (:meth:`Checkpoints.restore_latest`) checks the newest checkpoint against it and reads it; a
checkpoint that fails either way is moved aside to ``corrupt-<step>`` with a warning, and the one before it
is used. Intact files whose parameter names differ from the run's (another model or layout) are not
corruption: resuming raises :class:`CheckpointLayoutError` and touches nothing. A save that fails (a full
disk: ENOSPC) removes what it wrote and raises :class:`CheckpointSaveError`; the checkpoints before it stay
as they were.
"""

import hashlib
import json
import os
import pathlib
import shutil
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

from rwkv_jax.training import distributed

_COMPLETE_MARKER = "_CHECKPOINT_METADATA"
CHECKSUMS = "checksums.json"


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the earlier checkpoints are intact."""


class CheckpointLayoutError(ValueError):
    """The newest intact checkpoint holds other parameter names than the run (another model or layout)."""


class CorruptCheckpointWarning(UserWarning):
    """The newest checkpoint failed its checksums or could not be read; an earlier one is used."""


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
        """Writes the checkpoint of ``step`` unless a complete one exists (an incomplete one is replaced).

        Raises :class:`CheckpointSaveError` if the write fails, after removing what it wrote.
        """
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
        try:
            self._manager.save(step, args=items, force=True)
            self._manager.wait_until_finished()
            if distributed.is_primary():
                _write_checksums(self.directory / str(step))
        except Exception as e:  # any failure of the write: re-raised below with its cause
            self._remove_partial(step)
            previous = self.latest_step()
            kept = f"the newest intact checkpoint is step {previous}" if previous else "no earlier checkpoint"
            raise CheckpointSaveError(
                f"saving the checkpoint of step {step} in {self.directory} failed ({type(e).__name__}: {e}); "
                f"the partial write was removed and {kept}. Free space (or fix the storage) and rerun to "
                "resume from it"
            ) from e
        distributed.barrier(f"checkpoint {step}: checksums written")

    def _remove_partial(self, step: int) -> None:
        """Removes this step's directory and orbax's temporary directories of it (after a failed save)."""
        if distributed.is_primary():
            for path in [self.directory / str(step), *self.directory.glob(f"{step}.orbax-checkpoint-tmp*")]:
                shutil.rmtree(path, ignore_errors=True)
        self._manager.reload()

    def restore_latest(self, params_like: Any, opt_state_like: Any) -> tuple[int, Any, Any]:
        """``(step, params, opt_state)`` of the newest checkpoint that passes its checksums and reads, or
        ``(0, params_like, opt_state_like)`` if there is none.

        A checkpoint that fails is moved aside to ``corrupt-<step>`` (kept for inspection) with a
        :class:`CorruptCheckpointWarning`, and the one before it is tried.
        """
        for step in reversed(self.complete_steps()):
            step_dir = self.directory / str(step)
            try:
                _verify_checksums(step_dir)
                saved = _saved_names(step_dir)
            except Exception as e:  # a damaged file
                self._set_aside(step, e)
                continue
            _check_layout(saved, params_like, step_dir)  # intact files of another layout: the run's error
            try:
                params, opt_state = self.restore(step, params_like, opt_state_like)
            except Exception as e:  # whatever orbax raises on a damaged file
                self._set_aside(step, e)
                continue
            return step, params, opt_state
        return 0, params_like, opt_state_like

    def _set_aside(self, step: int, error: Exception) -> None:
        aside = self._move_aside(step)
        warnings.warn(
            f"checkpoint step {step} in {self.directory} is corrupt ({type(error).__name__}: "
            f"{str(error)[:500]}); moved to {aside.name}, resuming from an earlier checkpoint",
            CorruptCheckpointWarning,
            stacklevel=3,
        )

    def _move_aside(self, step: int) -> pathlib.Path:
        distributed.barrier(f"checkpoint {step}: corrupt")
        aside = self.directory / f"corrupt-{step}"
        suffix = 1
        while aside.exists():
            aside, suffix = self.directory / f"corrupt-{step}-{suffix}", suffix + 1
        if distributed.is_primary():
            os.replace(self.directory / str(step), aside)
        distributed.barrier(f"checkpoint {step}: moved aside")
        self._manager.reload()
        return aside

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


def _saved_names(step_dir: pathlib.Path) -> set[str] | None:
    """The names (``"a.b.c"``) of the parameters saved in ``step_dir`` (orbax's tree metadata), or None when
    the checkpoint has no such file (then reading it is the check). Shapes are not compared: the metadata
    records each process's written shard, not the global shape."""
    meta = step_dir / "params" / "_METADATA"
    if not meta.is_file():
        return None
    entries = json.loads(meta.read_text(encoding="utf-8"))["tree_metadata"].values()
    return {".".join(str(k["key"]) for k in entry["key_metadata"]) for entry in entries}


def _check_layout(saved: set[str] | None, params_like: Any, step_dir: pathlib.Path) -> None:
    """Raises :class:`CheckpointLayoutError` when the saved parameters' names differ from the run's
    (``params_like``): intact files of another model or layout, never a reason to start over."""
    if saved is None:
        return
    expected = {
        jax.tree_util.keystr(path, simple=True, separator=".")
        for path, _ in jax.tree_util.tree_leaves_with_path(params_like)
    }
    if saved == expected:
        return
    differences = (("missing:", sorted(expected - saved)), ("unexpected:", sorted(saved - expected)))
    details = [f"{label} {names[:4]}{' ...' * (len(names) > 4)}" for label, names in differences if names]
    raise CheckpointLayoutError(
        f"checkpoint {step_dir} holds other parameters than this run ({'; '.join(details)}). It was "
        "written for another model or layout (checkpoints from before scanned layers were stored stacked "
        "hold one blocks.N entry per layer; this run expects blocks.K.layers.* stacks): resume with the "
        "config and code that wrote it, or start in a new workdir."
    )


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def _file_digests(step_dir: pathlib.Path) -> dict[str, list]:
    """``{relative path: [size, sha256 hex]}`` of every file under ``step_dir`` but the checksum file."""
    digests = {}
    ours = (CHECKSUMS, f"{CHECKSUMS}.tmp")  # the .tmp of a run killed while writing it
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name not in ours):
        sha = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                sha.update(block)
        digests[path.relative_to(step_dir).as_posix()] = [path.stat().st_size, sha.hexdigest()]
    return digests


def _write_checksums(step_dir: pathlib.Path) -> None:
    """Writes ``checksums.json`` atomically (a temporary file, fsync, rename)."""
    digests = _file_digests(step_dir)
    tmp = step_dir / f"{CHECKSUMS}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(digests, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / CHECKSUMS)


def _verify_checksums(step_dir: pathlib.Path) -> None:
    """Raises ValueError naming the first file that is missing, extra or changed since the save.

    A checkpoint without ``checksums.json`` (written before checksums existed, or by a run killed between
    orbax's rename and the checksum write) is not checked here; reading it is the check.
    """
    recorded_file = step_dir / CHECKSUMS
    if not recorded_file.is_file():
        return
    recorded = json.loads(recorded_file.read_text(encoding="utf-8"))
    found = _file_digests(step_dir)
    for name in sorted(set(recorded) | set(found)):
        if name not in found:
            raise ValueError(f"{name} is missing")
        if name not in recorded:
            raise ValueError(f"{name} was not part of the checkpoint")
        if found[name] != recorded[name]:
            size, _ = found[name]
            raise ValueError(f"{name} changed since the save ({size} bytes, {recorded[name][0]} when saved)")
