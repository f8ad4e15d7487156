"""Training under faults: SIGKILL anywhere, a full disk during a save, a corrupted newest checkpoint.

The kill test runs the demo's setup (Finch, bfloat16 compute, chunked WKV; configs/shakespeare_finch.py
shrunk to a one-layer model on a synthetic corpus) and Goose in subprocesses, kills them with SIGKILL inside
a chosen phase (a training step, a checkpoint write, a validation pass, the restore), resumes, and checks
that the run ends with exactly the values an uninterrupted run logs (every step, and every value a killed
run logged for a step that the resumed run logged again) and exactly its final parameters. The phases come
from the loop's phase log (``RWKV_JAX_PHASE_LOG``, :func:`rwkv_jax.training.loop.phase`); the kill comes a
random fraction of that phase's duration (measured in the uninterrupted run) after the run enters it.

Kills per family: ``RWKV_JAX_KILLS`` (default 2; the long run in docs/reliability.md uses 12), random seed
``RWKV_JAX_KILL_SEED`` (default 0).
"""

import dataclasses
import errno
import itertools
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import jax
import numpy as np
import pytest

from rwkv_jax.training import loop
from rwkv_jax.training.checkpointing import (
    CHECKSUMS,
    Checkpoints,
    CheckpointSaveError,
    CorruptCheckpointWarning,
)
from rwkv_jax.training.config import ConfigDict, load_config, switch_family
from rwkv_jax.training.evaluate import load_run

from .conftest import tiny_config, tiny_model_section
from .test_loop import assert_logged_like, logged

REPO = pathlib.Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("RWKV_JAX_KILLS", "2"))
SEED = int(os.environ.get("RWKV_JAX_KILL_SEED", "0"))
RUNNER = """
import json, sys
from rwkv_jax.training.config import ConfigDict
from rwkv_jax.training.loop import train_and_evaluate
train_and_evaluate(ConfigDict(json.loads(open(sys.argv[1]).read())), sys.argv[2])
"""


def params_of(workdir: pathlib.Path) -> list[np.ndarray]:
    _, params, _, _ = load_run(workdir)
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def assert_same_params(workdir: pathlib.Path, reference: pathlib.Path) -> None:
    for a, b in zip(params_of(workdir), params_of(reference), strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit


# ---- Kills ----------------------------------------------------------------------------------------------


def demo_config(corpus: tuple[str, str], family: str) -> ConfigDict:
    """configs/shakespeare_finch.py (Finch, bfloat16 compute, chunked WKV) shrunk to run in seconds: one
    layer of 32, 12 steps of 2 x 16 bytes, a checkpoint every 3 steps, validation every 4, no sample."""
    config = load_config(str(REPO / "configs" / "shakespeare_finch.py") + ":runlocal")
    model = tiny_model_section("rwkv6")
    model.dtype, model.wkv_impl = "bfloat16", "chunked"
    config.model = model if family == "rwkv6" else switch_family(model, family)
    config.data.prepare, (config.data.train_path, config.data.val_path) = "", corpus
    config.data.seq_len, config.data.batch_size = 16, 2
    config.optim.warmup_steps = 2
    config.train.steps, config.train.max_seconds, config.train.log_every = 12, 0.0, 1
    config.train.progress = False
    config.ckpt.every, config.ckpt.keep = 3, 2
    config.eval.every, config.eval.batches, config.eval.sample_tokens = 4, 2, 0
    return config


@dataclasses.dataclass
class Child:
    """One training subprocess and its phase log."""

    process: subprocess.Popen
    log: pathlib.Path
    stderr: pathlib.Path

    def lines(self) -> list[str]:
        text = self.log.read_text(encoding="utf-8") if self.log.exists() else ""
        return text.split("\n")[:-1]  # the last item: "" or a line being written


def start(config_file: pathlib.Path, workdir: pathlib.Path, cache: pathlib.Path, tag: str) -> Child:
    log, stderr = workdir.parent / f"{tag}.phases", workdir.parent / f"{tag}.stderr"
    log.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "RWKV_JAX_PHASE_LOG": str(log),
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    command = [sys.executable, "-c", RUNNER, str(config_file), str(workdir)]
    with stderr.open("w") as err:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    return Child(process, log, stderr)


def finish(child: Child) -> None:
    assert child.process.wait(timeout=600) == 0, child.stderr.read_text()[-4000:]


def timed_reference(child: Child) -> dict[str, float]:
    """Runs ``child`` to the end, polling its phase log: ``{phase line: seconds until the next line}``."""
    seen: dict[str, float] = {}
    while child.process.poll() is None:
        now = time.perf_counter()
        for line in child.lines():
            seen.setdefault(line, now)
        time.sleep(0.001)
    finish(child)
    lines = child.lines()
    for line in lines:
        seen.setdefault(line, time.perf_counter())
    return {a: max(seen[b] - seen[a], 1e-3) for a, b in itertools.pairwise(lines)}


def kill_inside(child: Child, target: str, delay: float) -> str | None:
    """SIGKILLs ``child`` ``delay`` s after its phase log shows ``target``; returns the phase it was in
    (the log's last line), or None if the run ended first."""
    while target not in child.lines():
        if child.process.poll() is not None:
            finish(child)
            return None
        time.sleep(0.0005)
    time.sleep(delay)
    os.kill(child.process.pid, signal.SIGKILL)
    child.process.wait()
    lines = child.lines()
    return lines[-1] if child.process.returncode == -signal.SIGKILL else None


def targets(phases: list[str], kind: str, resumed_from: int) -> list[str]:
    """The lines of ``phases`` of ``kind`` that a run resumed from ``resumed_from`` reaches (a training
    step if none of ``kind``: the restore needs a checkpoint)."""
    if kind == "restore":
        return ["restore 0"] if resumed_from else targets(phases, "train", resumed_from)
    return [p for p in phases if p.split()[0] == kind and int(p.split()[1]) > resumed_from]


def _partial_checkpoints(ckpt_dir: pathlib.Path) -> list[pathlib.Path]:
    """orbax's temporary directories and step directories without their checksums (a kill mid-save)."""
    if not ckpt_dir.is_dir():
        return []
    return [
        p
        for p in ckpt_dir.iterdir()
        if "tmp" in p.name or (p.name.isdigit() and not (p / CHECKSUMS).exists())
    ]


def seen_values(workdir: pathlib.Path) -> list[tuple[int, str, float]]:
    """What the killed run left in metrics.jsonl (``logged``; a torn last line is left out)."""
    return logged(workdir) if (workdir / "metrics.jsonl").exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("family", ["rwkv6", "rwkv7"], ids=["finch", "goose"])
def test_runs_killed_anywhere_resume_to_the_losses_and_parameters_of_an_uninterrupted_run(
    corpus, tmp_path, family
):
    config = demo_config(corpus, family)
    config_file, cache = tmp_path / "config.json", tmp_path / "jax_cache"
    config_file.write_text(config.to_json())
    reference = tmp_path / "reference" / "run"
    reference.parent.mkdir()
    durations = timed_reference(start(config_file, reference, cache, "reference"))
    phases = [line for line in durations if not line.startswith("end")]

    rng = random.Random(f"{SEED}-{family}")
    kinds = ["train", "save", "eval", "restore"]  # in turn, each family from its own place in the cycle
    offset = 2 * ["rwkv6", "rwkv7"].index(family)
    workdir = tmp_path / "killed" / "run"
    workdir.parent.mkdir()
    seen: list[tuple[int, str, float]] = []
    landed: Counter[str] = Counter()
    mid_write = attempts = 0
    while sum(landed.values()) < KILLS:
        attempts += 1
        assert attempts <= 4 * KILLS + 4, f"only {sum(landed.values())} kills landed: {landed}"
        resumed_from = Checkpoints(workdir / "checkpoints").latest_step() or 0
        kind = kinds[(offset + attempts - 1) % len(kinds)]
        choices = targets(phases, kind, resumed_from)
        if not choices and resumed_from:  # past its last checkpoint: let it finish, check, start afresh
            finish(start(config_file, workdir, cache, f"attempt{attempts}-finish"))
            assert_resumed_like(workdir, reference, seen)
            shutil.rmtree(workdir)
            choices = targets(phases, kind, 0)
        target = rng.choice(choices)
        child = start(config_file, workdir, cache, f"attempt{attempts}")
        phase = kill_inside(child, target, rng.uniform(0.0, 0.9) * durations[target])
        if phase is None or phase.startswith("end"):  # it ended before the kill: check it, start afresh
            assert_resumed_like(workdir, reference, seen)
            shutil.rmtree(workdir)
            continue
        landed[phase.split()[0]] += 1
        mid_write += phase.startswith("save") and any(_partial_checkpoints(workdir / "checkpoints"))
        seen += seen_values(workdir)
    finish(start(config_file, workdir, cache, "resumed"))
    assert_resumed_like(workdir, reference, seen)

    print(
        f"{family}: {sum(landed.values())} kills by phase {dict(landed)} ({mid_write} left a half-written "
        f"checkpoint) in {attempts} attempts (seed {SEED})"
    )


def assert_resumed_like(workdir: pathlib.Path, reference: pathlib.Path, seen: list) -> None:
    """``workdir`` ends as the uninterrupted ``reference``: every logged value (loss, grad_norm, lr, val_*
    of every step) and every value ``seen`` in the metrics of its killed runs, and the final parameters."""
    assert logged(workdir) == logged(reference)  # exact equality
    assert_logged_like(seen, logged(reference))
    assert_same_params(workdir, reference)
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["val_loss"] == json.loads((reference / "final_metrics.json").read_text())["val_loss"]


# ---- A full disk, a corrupted checkpoint -----------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> pathlib.Path:
    """The tiny RWKV-4 run of test_loop: 6 steps, a checkpoint every 2, a final validation."""
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    loop.train_and_evaluate(tiny_config(corpus), workdir)
    return workdir


_FULL_DISK = {"step": None}


def _full_disk_hook(event: str, args: tuple) -> None:
    """An audit hook: while ``_FULL_DISK["step"]`` is set, opening the parameters' ``_METADATA`` of that
    step's checkpoint for writing fails with ENOSPC (after orbax has written the array data)."""
    step = _FULL_DISK["step"]
    if step is None or event != "open" or not isinstance(args[0], str) or "w" not in str(args[1]):
        return
    path = pathlib.PurePath(args[0])
    if (
        path.name == "_METADATA"
        and f"{step}.orbax-checkpoint-tmp" in args[0]
        and "params" in path.parent.name
    ):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), args[0])


sys.addaudithook(_full_disk_hook)  # inert until a test sets _FULL_DISK["step"]


def test_a_full_disk_during_a_save_stops_with_a_clear_error_and_leaves_the_previous_checkpoint(
    corpus, uninterrupted, workdir
):
    _FULL_DISK["step"] = 4
    try:
        with pytest.raises(CheckpointSaveError, match=r"step 4 .*No space left on device.*step 2") as error:
            loop.train_and_evaluate(tiny_config(corpus), workdir)
    finally:
        _FULL_DISK["step"] = None
    assert "rerun to resume" in str(error.value)
    ckpt_dir = workdir / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["2"]  # nothing of step 4 left behind
    _, params, _, step = load_run(workdir)
    assert step == 2 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))

    results = loop.train_and_evaluate(tiny_config(corpus), workdir)  # space freed: resume
    assert results["start_step"] == 2
    assert logged(workdir) == logged(uninterrupted)
    assert_same_params(workdir, uninterrupted)


def _garble(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), 7):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    files = [p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


DAMAGE = {
    "garbled array data": lambda step_dir: _garble(_largest_data_file(step_dir)),
    "truncated array data": lambda step_dir: os.truncate(_largest_data_file(step_dir), 10),
    "a deleted file": lambda step_dir: (step_dir / "params" / "_METADATA").unlink(),
    # Without its checksums (a checkpoint of an older version): reading it is the check.
    "truncated metadata, no checksums": lambda step_dir: (
        (step_dir / CHECKSUMS).unlink(),
        os.truncate(step_dir / "params" / "_METADATA", 20),
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_corrupted_newest_checkpoint_is_detected_and_the_previous_one_used_with_a_warning(
    uninterrupted, workdir, damage
):
    shutil.copytree(uninterrupted, workdir)
    (workdir / "final_metrics.json").unlink()
    DAMAGE[damage](workdir / "checkpoints" / "6")
    config = ConfigDict(json.loads((workdir / "config.json").read_text()))
    with pytest.warns(CorruptCheckpointWarning, match=r"checkpoint step 6 .* corrupt .*moved to corrupt-6"):
        results = loop.train_and_evaluate(config, workdir)
    assert results["start_step"] == 4
    assert (workdir / "checkpoints" / "corrupt-6").is_dir()  # kept for inspection
    assert Checkpoints(workdir / "checkpoints").complete_steps() == [2, 4, 6]
    assert logged(workdir) == logged(uninterrupted)
    assert_same_params(workdir, uninterrupted)
