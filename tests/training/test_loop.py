"""The training loop end to end on a tiny config: a run, an interrupted-and-resumed run that repeats the
uninterrupted one bit for bit, a NaN stop that leaves the last checkpoint alone, and eval of a checkpoint."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from rwkv_jax.training import loop
from rwkv_jax.training.checkpointing import Checkpoints
from rwkv_jax.training.evaluate import load_run
from rwkv_jax.training.metrics import read_metrics

from .conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def losses(workdir: pathlib.Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r}


def logged(workdir: pathlib.Path) -> list[tuple[int, str, float]]:
    """Every value in ``metrics.jsonl`` as ``(step, name, value)`` in file order, but the throughput (wall
    time): the values a resumed run must repeat exactly."""
    records = read_metrics(workdir / "metrics.jsonl")
    return [
        (r["step"], k, v) for r in records for k, v in r.items() if k not in ("step", "tokens_per_second")
    ]


def assert_logged_like(seen: list[tuple[int, str, float]], reference: list[tuple[int, str, float]]) -> None:
    """Every value in ``seen`` equals (exactly) the reference's value of that name at that step."""
    table = {(step, name): value for step, name, value in reference}
    assert len(table) == len(reference), "the reference logs a value twice"
    for step, name, value in seen:
        assert (step, name) in table, f"{name} at step {step} is not in the uninterrupted run"
        assert value == table[(step, name)], f"{name} at step {step}: {value} != {table[(step, name)]}"


@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory) -> pathlib.Path:
    """An uninterrupted 6-step run with checkpoints every 2 steps and a final validation."""
    workdir = tmp_path_factory.mktemp("finished")
    results = loop.train_and_evaluate(tiny_config(corpus), workdir)
    assert results["final_step"] == 6 and np.isfinite(results["val_loss"])
    return workdir


def test_a_run_trains_saves_and_logs(finished_run):
    assert Checkpoints(finished_run / "checkpoints").complete_steps() == [2, 4, 6]
    steps = losses(finished_run)
    assert sorted(steps) == [1, 2, 3, 4, 5, 6] and steps[6] < steps[1]
    final = json.loads((finished_run / "final_metrics.json").read_text())
    assert final["val_bits_per_byte"] == pytest.approx(final["val_loss"] / np.log(2))
    assert list((finished_run / "tensorboard").glob("events.out.tfevents.*"))


def test_interrupted_during_a_save_resumes_bit_for_bit(corpus, finished_run, workdir, monkeypatch):
    real_save = Checkpoints.save

    def killed_while_saving_step_4(self, step, params, opt_state):
        if step == 4:  # what a kill mid-save leaves: orbax's temporary directory and a half-made step dir
            (self.directory / "4.orbax-checkpoint-tmp-1").mkdir()
            (self.directory / "4").mkdir()
            (self.directory / "4" / "partial").write_bytes(b"\0" * 10)
            raise KeyboardInterrupt
        real_save(self, step, params, opt_state)

    monkeypatch.setattr(Checkpoints, "save", killed_while_saving_step_4)
    with pytest.raises(KeyboardInterrupt):
        loop.train_and_evaluate(tiny_config(corpus), workdir)
    assert Checkpoints(workdir / "checkpoints").latest_step() == 2
    before_the_kill = logged(workdir)  # steps 1-4: 3 and 4 are logged again after the resume
    assert sorted({step for step, _, _ in before_the_kill}) == [1, 2, 3, 4]
    monkeypatch.setattr(Checkpoints, "save", real_save)

    results = loop.train_and_evaluate(tiny_config(corpus), workdir)
    assert results["start_step"] == 2
    assert Checkpoints(workdir / "checkpoints").complete_steps() == [2, 4, 6]
    # Exact float equality of every logged value (loss, grad_norm, lr, the final validation), and of the
    # values the killed run logged for steps 3 and 4 with the values the resumed run logged for them again.
    assert logged(workdir) == logged(finished_run)
    assert_logged_like(before_the_kill, logged(finished_run))
    _, resumed, _, _ = load_run(workdir)
    _, uninterrupted, _, _ = load_run(finished_run)
    for a, b in zip(leaves(resumed), leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(a, b)


def leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_non_finite_loss_stops_at_once_and_keeps_the_last_checkpoint(corpus, workdir):
    config = tiny_config(corpus)
    config.optim.lr, config.optim.clip_norm, config.optim.warmup_steps = 1e30, 0.0, 0
    config.ckpt.every = 1
    with pytest.raises(loop.NonFiniteLossError, match=r"at step 2; stopped without saving.*step 1"):
        loop.train_and_evaluate(config, workdir)
    assert Checkpoints(workdir / "checkpoints").complete_steps() == [1]
    assert sorted(losses(workdir)) == [1]


def test_eval_script_scores_a_checkpoint(corpus, finished_run, tmp_path):
    passages = tmp_path / "passages.jsonl"
    passages.write_text('{"text": "the of and to the"}\n{"text": "he was not at his"}\n')
    command = [sys.executable, str(REPO / "experiments" / "eval.py"), "--workdir", str(finished_run)]
    command += ["--data", corpus[1], "--seq-len", "16", "--batch-size", "2", "--max-batches", "2"]
    command += ["--lambada", str(passages), "--tokenizer", "byte"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    final = json.loads((finished_run / "final_metrics.json").read_text())
    assert results["loss"] == pytest.approx(final["val_loss"], rel=1e-5)  # the same batches as validation
    assert results["lambada_passages"] == 2 and 0 <= results["lambada_accuracy"] <= 1
    assert results["perplexity"] == pytest.approx(np.exp(results["loss"]))


def test_goose_trains_from_the_official_init_and_its_loss_falls(corpus, workdir):
    config = tiny_config(corpus, family="rwkv7")
    config.ckpt.every = 0
    results = loop.train_and_evaluate(config, workdir)
    steps = losses(workdir)
    assert results["final_step"] == 6 and np.isfinite(results["val_loss"])
    assert steps[6] < steps[1]
