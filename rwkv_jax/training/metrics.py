"""Metrics out: JSON lines, TensorBoard event files and a tqdm progress bar.

``workdir/metrics.jsonl`` holds one record per line, ``{"step": s, "name": value, ...}``, and
``workdir/tensorboard/`` the same scalars as TensorBoard events. On resume from step ``s`` the records after
``s`` (written by the interrupted run after its last checkpoint) are dropped, and so is a last line that a
kill cut short, so the file reads as one run; a record the resumed run makes again at a step it kept (the
final validation of a run killed after it) is not written twice.
"""

import importlib
import json
import math
import os
import pathlib
import sys
from typing import Any

import tqdm

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    """Appends scalar records to ``workdir/metrics.jsonl`` and TensorBoard (when ``tensorboard``).

    Disabled (``enabled=False``: the processes of a multi-process run but the first), it writes nothing.
    """

    def __init__(
        self, workdir: str | os.PathLike, resume_step: int = 0, tensorboard: bool = True, enabled: bool = True
    ):
        self.path = pathlib.Path(workdir) / METRICS_FILE
        self._enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._kept = {
            (r["step"], frozenset(r) - {"step"}) for r in _drop_records_after(self.path, resume_step)
        }
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            self._tb = _summary_writer_class()(
                str(pathlib.Path(workdir) / "tensorboard"),
                purge_step=resume_step + 1 if resume_step else None,
            )

    def write(self, step: int, **scalars: float) -> None:
        """Records ``scalars`` (python floats) at ``step``."""
        if not self._enabled:
            return
        if (int(step), frozenset(scalars)) in self._kept:  # logged by the run this one resumes
            return
        record = {"step": int(step), **{k: _json_number(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, float(value), int(step))
            self._tb.flush()

    def close(self) -> None:
        if not self._enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, in order; a last line without its newline (a run killed
    while writing it) is left out."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]  # lines[-1]: "" or a torn record


def _drop_records_after(path: pathlib.Path, step: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    kept = [r for r in read_metrics(path) if r["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)
    return kept


def _json_number(value: Any) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else str(value)  # JSON has no NaN/Inf literal


class Progress:
    """A tqdm bar over the training steps showing loss, tokens/s and (tqdm's own) ETA, and lines above it.

    ``bar=False`` hides the bar but still prints the lines; ``silent=True`` prints nothing at all (the
    processes of a multi-process run other than the first).
    """

    def __init__(self, total: int, initial: int, bar: bool = True, silent: bool = False):
        self._silent = silent
        self._bar = tqdm.tqdm(
            total=total, initial=initial, disable=silent or not bar, unit="step", dynamic_ncols=True
        )

    def update(self, steps: int, loss: float, tokens_per_second: float) -> None:
        self._bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_second:,.0f}", refresh=False)
        self._bar.update(steps)

    def write(self, text: str) -> None:
        """Prints a line above the bar."""
        if not self._silent:
            self._bar.write(text)

    def close(self) -> None:
        self._bar.close()


def _summary_writer_class() -> type:
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    tensorboardX imports torch whenever it is installed, only to accept torch tensors as values (2-3 s of
    every training run's start on this project's CPU); the writer here logs Python floats. A ``None`` in
    ``sys.modules`` makes that optional import fail as if torch were absent; the entry is removed after,
    so a later ``import torch`` works. Where torch is already imported, tensorboardX takes it as usual.
    """
    if "torch" in sys.modules:
        return importlib.import_module("tensorboardX").SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        return importlib.import_module("tensorboardX").SummaryWriter
    finally:
        del sys.modules["torch"]
