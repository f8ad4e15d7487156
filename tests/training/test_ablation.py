"""The ablation helpers: variants change only the model section, parameter counts are matched, and the
summary and conclusion follow the numbers (the notebooks run the training itself)."""

import dataclasses

from rwkv_jax.training.ablation import (
    RunResult,
    conclusion,
    match_parameters,
    parameter_count,
    summarize,
    summary_table,
    variant_model,
)
from rwkv_jax.training.config import load_config
from tests.training.test_config import CONFIGS


def result(variant: str, seed: int, final: float) -> RunResult:
    return RunResult(variant, seed, (1, 2), (3.0, 2.0), (2,), (final,), parameters=100, seconds=1.0)


def test_a_variant_changes_the_model_section_only_and_can_switch_family():
    base = load_config(f"{CONFIGS / 'ablation.py'}:setting=ci")
    goose = variant_model(base, {"family": "rwkv7", "bonus": False})
    assert goose.family == "rwkv7" and goose.bonus is False and goose.n_embd == base.model.n_embd
    assert variant_model(base, {"decay": "static"}).decay == "static" and base.model.decay is None


def test_match_parameters_finds_the_closest_width():
    base = load_config(f"{CONFIGS / 'ablation.py'}:setting=full")
    target = parameter_count(base.model)
    rwkv4 = variant_model(base, {"family": "rwkv4"})
    widths = range(32, 1025, 32)
    matched = match_parameters(rwkv4, target, "n_embd", widths)
    counts = {w: parameter_count(variant_model(base, {"family": "rwkv4", "n_embd": w})) for w in widths[:8]}
    best = min(counts, key=lambda w: abs(counts[w] - target))
    assert matched.n_embd == best


def test_conclusion_separates_differences_beyond_the_seed_spread_from_noise():
    results = [result("A", s, f) for s, f in enumerate((1.70, 1.71, 1.72))]
    results += [result("B", s, f) for s, f in enumerate((1.80, 1.81, 1.82))]  # worse beyond the spread
    results += [result("C", s, f) for s, f in enumerate((1.69, 1.715, 1.73))]  # within it
    rows = {row["variant"]: row for row in summarize(results)}
    assert abs(rows["B"]["mean"] - 1.81) < 1e-12 and rows["B"]["seeds"] == 3
    text = conclusion(results)
    assert "Ranking by final validation loss (lower is better): A 1.710, C 1.712, B 1.810." in text
    assert "B vs A: +0.100 nats (worse by more than the spread" in text
    assert "C vs A: +0.002 nats (within the spread" in text
    assert "one seed" in conclusion([result("A", 0, 1.0), result("B", 0, 1.1)])


def test_a_diverged_run_is_reported_and_left_out_of_the_statistics():
    results = [result("A", 0, 1.7), result("A", 1, 1.72), result("B", 0, 1.9)]
    results.append(dataclasses.replace(result("B", 1, 0.0), diverged_at=41))
    results.append(dataclasses.replace(result("C", 0, 0.0), diverged_at=7))
    rows = {row["variant"]: row for row in summarize(results)}
    assert rows["B"]["seeds"] == 1 and rows["B"]["mean"] == 1.9 and rows["B"]["diverged"] == [41]
    assert rows["C"]["seeds"] == 0 and rows["C"]["diverged"] == [7]
    text = conclusion(results)
    assert "B diverged (NaN/Inf loss) in 1 of 2 runs, at step(s) 41." in text
    assert "C diverged (NaN/Inf loss) in 1 of 1 runs, at step(s) 7." in text
    assert "C vs A" not in text and "| step 41 |" in summary_table(results)
