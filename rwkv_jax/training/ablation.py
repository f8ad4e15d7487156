"""Ablation studies as configuration: train named variants of one base config over several seeds, then
summarise, plot and state what the numbers say.

A variant is a dict of ``config.model`` fields (``{"family": "rwkv7", "value_residual": False}``); everything
else (data, token budget, optimiser) comes from the base config, so every variant sees the same batches in the
same order for a given seed. Used by the ablation notebooks::

    base = load_config("configs/ablation.py:setting=ci")
    results = run_ablation(base, {"Finch": {}, "Eagle": {"version": "5.2"}}, seeds=(0, 1), workdir="runs")
    print(summary_table(results)); plot_results(results); print(conclusion(results))

Parameter counts are equalised across variants with :func:`match_parameters` (it searches a width).
"""

import copy
import dataclasses
import math
import pathlib
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx

from rwkv_jax.models.family import get_family
from rwkv_jax.training import loop
from rwkv_jax.training.config import ConfigDict, model_section, switch_family, validate
from rwkv_jax.training.metrics import read_metrics
from rwkv_jax.training.model import model_config


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One variant trained with one seed.

    steps, losses: the logged training steps and their losses (nats per token).
    val_steps, val_losses: the validation passes (nats per token); the last is the final one.
    parameters: trainable parameter count; seconds: wall time of the run (compilation included).
    diverged_at: the step whose loss was NaN or Inf (the run stopped there), None if it finished.
    """

    variant: str
    seed: int
    steps: tuple[int, ...]
    losses: tuple[float, ...]
    val_steps: tuple[int, ...]
    val_losses: tuple[float, ...]
    parameters: int
    seconds: float
    diverged_at: int | None = None

    @property
    def final_val_loss(self) -> float:
        """The last validation loss; NaN for a run that diverged (it has no final model)."""
        return math.nan if self.diverged_at is not None or not self.val_losses else self.val_losses[-1]


def variant_model(base: ConfigDict, changes: Mapping[str, Any]) -> ConfigDict:
    """The ``config.model`` section of ``base`` with ``changes`` (a ``family`` change switches the section,
    keeping the fields both families have)."""
    changes = dict(changes)
    section = base.model
    family = changes.pop("family", section.family)
    if family != section.family:
        section = switch_family(section, family)
    return model_section(family, **{**_fields(section), **changes})


def _fields(section: ConfigDict) -> dict[str, Any]:
    return {key: value for key, value in section.items() if key != "family"}


def parameter_count(section: ConfigDict) -> int:
    """Trainable parameters of the model of a ``config.model`` section (built abstractly: no memory)."""
    family = get_family(section.family)
    abstract = nnx.eval_shape(lambda: family.model_class(model_config(section), rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in nnx.to_flat_state(nnx.state(abstract, nnx.Param)).leaves)


def match_parameters(section: ConfigDict, target: int, field: str, values: Sequence[int]) -> ConfigDict:
    """``section`` with ``field`` set to the value of ``values`` (ascending) whose parameter count is closest
    to ``target``: the width ``n_embd`` (in multiples of the head size) for a coarse match across families,
    then the FFN width ``ffn_dim`` for a fine one. The count grows with either, so this bisects."""

    def with_value(value: int) -> ConfigDict:
        return model_section(section.family, **{**_fields(section), field: value})

    low, high = 0, len(values) - 1
    while low < high:  # the first value whose count reaches the target
        middle = (low + high) // 2
        low, high = (
            (middle + 1, high) if parameter_count(with_value(values[middle])) < target else (low, middle)
        )
    nearby = [with_value(values[i]) for i in {max(low - 1, 0), low}]
    return min(nearby, key=lambda s: abs(parameter_count(s) - target))


def run_ablation(
    base: ConfigDict,
    variants: Mapping[str, Mapping[str, Any] | ConfigDict],
    seeds: Sequence[int],
    workdir: str | pathlib.Path,
) -> list[RunResult]:
    """Trains every variant with every seed (``workdir/<variant>/seed<k>``); a finished run is read back.

    Args:
      base: the training config every variant starts from.
      variants: name -> model field changes, or a whole ``config.model`` section.
      seeds: the config seeds (parameter init and batch order).
      workdir: where the runs go.
    """
    results = []
    for name, changes in variants.items():
        section = changes if isinstance(changes, ConfigDict) else variant_model(base, changes)
        for seed in seeds:
            config = copy.deepcopy(base)
            config.model = section
            config.seed = seed
            validate(config)
            results.append(_train_one(name, config, pathlib.Path(workdir) / _slug(name) / f"seed{seed}"))
    return results


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "variant"


def _train_one(name: str, config: ConfigDict, workdir: pathlib.Path) -> RunResult:
    began = time.perf_counter()
    diverged_at = None
    try:
        loop.train_and_evaluate(config, workdir)
    except loop.NonFiniteLossError as error:  # a result of the ablation, not a failure of the study
        found = re.search(r"at step (\d+)", str(error))
        diverged_at = int(found.group(1)) if found else -1
    records = read_metrics(workdir / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    return RunResult(
        variant=name,
        seed=config.seed,
        steps=tuple(s for s, _ in train),
        losses=tuple(v for _, v in train),
        val_steps=tuple(s for s, _ in val),
        val_losses=tuple(v for _, v in val),
        parameters=parameter_count(config.model),
        seconds=time.perf_counter() - began,
        diverged_at=diverged_at,
    )


def summarize(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Per variant, in first-seen order: final validation loss mean, std (over the seeds that finished; NaN
    when none did), min, max, seeds, diverged (runs whose loss became NaN/Inf), parameters, mean wall time."""
    names = list(dict.fromkeys(r.variant for r in results))
    rows = []
    for name in names:
        runs = [r for r in results if r.variant == name]
        finals = np.array([r.final_val_loss for r in runs if r.diverged_at is None])
        empty = finals.size == 0
        rows.append(
            dict(
                variant=name,
                mean=math.nan if empty else float(finals.mean()),
                std=float(finals.std(ddof=1)) if len(finals) > 1 else 0.0,
                min=math.nan if empty else float(finals.min()),
                max=math.nan if empty else float(finals.max()),
                seeds=len(finals),
                diverged=[r.diverged_at for r in runs if r.diverged_at is not None],
                parameters=runs[0].parameters,
                seconds=float(np.mean([r.seconds for r in runs])),
            )
        )
    return rows


def summary_table(results: Sequence[RunResult]) -> str:
    """The summary as a Markdown table (final validation loss in nats per byte for byte-level data)."""
    lines = [
        "| variant | parameters | final val loss (mean ± std) | min | max | seeds | diverged | s / run |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in summarize(results):
        diverged = ", ".join(f"step {step}" for step in row["diverged"]) or "-"
        lines.append(
            f"| {row['variant']} | {row['parameters']:,} | {row['mean']:.4f} ± {row['std']:.4f} | "
            f"{row['min']:.4f} | {row['max']:.4f} | {row['seeds']} | {diverged} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def conclusion(results: Sequence[RunResult], baseline: str | None = None) -> str:
    """A short conclusion drawn from the numbers: the ranking, and for each variant whether its difference
    from ``baseline`` (default: the first variant) exceeds the spread over seeds."""
    rows = summarize(results)
    baseline = baseline or rows[0]["variant"]
    base = next(r for r in rows if r["variant"] == baseline)
    ranked = sorted((r for r in rows if r["seeds"]), key=lambda r: r["mean"])
    lines = [
        "Ranking by final validation loss (lower is better): "
        + ", ".join(f"{r['variant']} {r['mean']:.3f}" for r in ranked)
        + "."
    ]
    for row in rows:
        if row["diverged"]:
            steps = ", ".join(map(str, row["diverged"]))
            runs = len(row["diverged"]) + row["seeds"]
            count = len(row["diverged"])
            lines.append(
                f"{row['variant']} diverged (NaN/Inf loss) in {count} of {runs} runs, at step(s) {steps}."
            )
        if row is base or not row["seeds"]:
            continue
        difference = row["mean"] - base["mean"]
        spread = max(row["max"] - row["min"], base["max"] - base["min"])
        if min(row["seeds"], base["seeds"]) < 2:
            verdict = "one seed: no spread to judge the difference against"
        elif abs(difference) <= spread:
            verdict = "within the spread over seeds: not a measurable difference at this budget"
        else:
            verdict = ("worse" if difference > 0 else "better") + " by more than the spread over seeds"
        lines.append(
            f"{row['variant']} vs {baseline}: {difference:+.3f} nats ({verdict}; spread {spread:.3f})."
        )
    return "\n".join(lines)


def plot_results(results: Sequence[RunResult], title: str = "", path: str | pathlib.Path | None = None):
    """Two panels: training loss curves (mean over seeds, min-max band) and the final validation loss per
    variant (mean with min-max error bars, seeds as dots). Saved to ``path`` if given; returns the figure."""
    import matplotlib.pyplot as plt

    fig, (curves, finals) = plt.subplots(1, 2, figsize=(11, 4))
    for index, row in enumerate(summarize(results)):
        runs = [r for r in results if r.variant == row["variant"]]
        logged = min(len(r.steps) for r in runs)  # a diverged run logged fewer steps
        if logged == 0:
            continue
        steps = np.array(runs[0].steps[:logged])
        losses = np.array([r.losses[:logged] for r in runs])
        (line,) = curves.plot(steps, losses.mean(0), label=row["variant"])
        curves.fill_between(steps, losses.min(0), losses.max(0), color=line.get_color(), alpha=0.2)
        low, high = row["mean"] - row["min"], row["max"] - row["mean"]
        finals.errorbar(
            [index], [row["mean"]], yerr=[[low], [high]], fmt="o", color=line.get_color(), capsize=4
        )
        finals.scatter([index] * len(runs), [r.final_val_loss for r in runs], color=line.get_color(), s=8)
    curves.set(xlabel="step", ylabel="training loss (nats / token)", title=title or "training loss")
    curves.legend()
    names = [row["variant"] for row in summarize(results)]
    finals.set_xticks(range(len(names)), names, rotation=20)
    finals.set(ylabel="final validation loss (nats / token)", title="final validation loss over seeds")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
