"""rwkv_jax.numerics: the error metric, the random inputs of each family's regimes, and a tiny sweep of the
pure-JAX forms of every registered family against the float64 references; the compare_numerics CLI."""

import csv
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwkv_jax import numerics
from rwkv_jax.models.family import families
from rwkv_jax.numerics import Bounds, Row, compare_forms, make_inputs, markdown_table, relative_error
from rwkv_jax.wkv import v7_chunked
from rwkv_jax.wkv.numerics_case import LOG_DECAY_RANGES
from rwkv_jax.wkv.v4_numerics import LARGE_KEY
from rwkv_jax.wkv.v7 import WKV7_FORMS
from rwkv_jax.wkv.v7_numerics import LARGE_ICLR, STRONGEST_LOG_DECAY
from tests.conftest import load_experiment


def test_relative_error_is_the_norm_ratio():
    assert relative_error([3.0, 4.0], [0.0, 5.0]) == pytest.approx(math.sqrt(9 + 1) / 5)


def test_relative_error_surfaces_nan_in_a_long_array():
    """A single NaN among >= 4096 elements (where XLA:CPU's max would drop it) gives NaN, not a number."""
    expected = np.ones(8192)
    actual = expected.copy()
    actual[5000] = np.nan
    assert math.isnan(relative_error(jnp.asarray(actual, jnp.float32), expected))
    assert math.isnan(relative_error(expected, actual))


def test_relative_error_surfaces_inf():
    actual = np.ones(10)
    actual[3] = -np.inf
    assert relative_error(actual, np.ones(10)) == math.inf


def test_relative_error_of_a_zero_reference():
    assert relative_error(np.zeros(4), np.zeros(4)) == 0.0
    assert relative_error(np.full(4, 1e-30), np.zeros(4)) == math.inf


def test_relative_error_rejects_different_shapes():
    with pytest.raises(ValueError, match=r"shapes differ, \(3,\) vs reference \(4,\)"):
        relative_error(np.ones(3), np.ones(4))


def test_format_error_spells_out_non_finite_values():
    assert [numerics.format_error(e) for e in (math.nan, math.inf, 1.234e-5)] == ["NaN", "Inf", "1.2e-05"]


SWEPT = [family.name for family in numerics.swept_families()]
REGIMES = [
    (family.name, regime) for family in numerics.swept_families() for regime in family.numerics.regimes
]


def test_every_registered_family_with_a_wkv_is_swept():
    assert SWEPT == [family.name for family in families() if family.wkv is not None]
    assert {"rwkv4", "rwkv6", "rwkv7"} <= set(SWEPT)


def log_decays_of(family: str, inputs: tuple) -> np.ndarray:
    names = numerics.swept_family(family).wkv.input_names
    return np.asarray(inputs[names.index("w_log")])


@pytest.mark.parametrize(("family", "regime"), REGIMES)
def test_inputs_of_every_regime_fit_the_wkv_table(family, regime):
    """Shapes as the family's WKV table declares them, finite values, float32 log decays <= 0."""
    record = numerics.swept_family(family)
    inputs, state = make_inputs(family, batch=2, length=5, heads=3, size=4, dtype="bfloat16", regime=regime)
    sizes = record.wkv.sizes(inputs, state)  # raises if a shape is not as declared
    assert sizes["B"] == 2 and sizes["T"] == 5
    w_log = log_decays_of(family, inputs)
    assert w_log.dtype == np.float32 and np.all(w_log <= 0)
    leaves = [*inputs, *jax.tree.leaves(state)]
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in leaves)
    assert {x.dtype for x in jax.tree.leaves(state)} == {jnp.dtype("float32")}
    assert jnp.dtype("bfloat16") in {x.dtype for x in inputs}


@pytest.mark.parametrize("regime", numerics.swept_family("rwkv6").numerics.regimes)
def test_shared_decay_regimes_lie_in_their_ranges(regime):
    w_log = log_decays_of("rwkv6", make_inputs("rwkv6", length=32, regime=regime, seed=3)[0])
    low, high = LOG_DECAY_RANGES[regime]
    # w_log = -exp(x), x in [low, high]; float32 rounding allowed for.
    assert np.all(w_log <= -np.exp(low) * (1 - 1e-6)) and np.all(w_log >= -np.exp(high) * (1 + 1e-6))


def test_named_regimes_reach_their_extremes():
    near0 = log_decays_of("rwkv6", make_inputs("rwkv6", length=64, regime="near0")[0])
    near1 = log_decays_of("rwkv6", make_inputs("rwkv6", length=64, regime="near1")[0])
    assert np.all(np.exp(np.asarray(near0, np.float64)) < 1e-39)  # below float32's smallest normal
    assert np.all(near1 >= -1e-6)
    w_mixed = log_decays_of("rwkv6", make_inputs("rwkv6", length=256, regime="mixed")[0])
    assert w_mixed.min() < -50 and w_mixed.max() > -1e-5  # spans both ends


def test_large_keys_only_in_the_large_k_regime():
    k_large = np.asarray(make_inputs("rwkv4", length=256, regime="large_k")[0][2])
    k_typical = np.asarray(make_inputs("rwkv4", length=256, regime="typical")[0][2])
    assert 40 < np.abs(k_large).max() <= LARGE_KEY
    assert np.abs(k_typical).max() < 8


def goose_inputs(regime: str) -> dict[str, np.ndarray]:
    inputs, _ = make_inputs("rwkv7", length=64, regime=regime, seed=1)
    return {name: np.asarray(x, np.float64) for name, x in zip(WKV7_FORMS.input_names, inputs, strict=True)}


@pytest.mark.parametrize("regime", numerics.swept_family("rwkv7").numerics.regimes)
def test_goose_inputs_are_the_models(regime):
    """a = -kk with kk a unit vector per head, b = kk * iclr with iclr in (0, 1], decays within the model's
    soft clamp and the chunked form's bound at the default chunk size."""
    x = goose_inputs(regime)
    kk = -x["a"]
    np.testing.assert_allclose(np.linalg.norm(kk, axis=-1), 1.0, rtol=1e-6)
    iclr = x["b"] / kk
    assert np.all(iclr > 0) and np.all(iclr <= 1 + 1e-6)
    assert np.all(x["w_log"] >= STRONGEST_LOG_DECAY * (1 + 1e-6)) and np.all(x["w_log"] < 0)
    assert -x["w_log"].min() * WKV7_FORMS.default_chunk_size <= v7_chunked.MAX_CHUNK_LOG_DECAY


def test_goose_regimes_reach_their_extremes():
    assert np.all(goose_inputs("near1")["w_log"] >= -1e-6)
    np.testing.assert_allclose(goose_inputs("strongest")["w_log"], STRONGEST_LOG_DECAY, rtol=1e-7)
    large = goose_inputs("large_iclr")
    assert np.all(large["b"] / -large["a"] >= LARGE_ICLR[0] * (1 - 1e-6))
    typical = goose_inputs("typical")
    assert (typical["b"] / -typical["a"]).max() < LARGE_ICLR[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(family="v5"), "unknown family 'v5'"),
        (dict(family="rwkv6", regime="large_k"), "unknown regime for rwkv6 'large_k'"),
        (dict(family="rwkv4", dtype="float16"), "unknown dtype 'float16'"),
        (dict(family="rwkv4", length=0), "length must be >= 1"),
    ],
)
def test_bad_input_requests_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_inputs(**kwargs)


def test_sweep_rejects_forms_a_family_lacks():
    with pytest.raises(ValueError, match="unknown form of rwkv4 'chunked'"):
        compare_forms("rwkv4", forms=("chunked",))


def row_with(**errors) -> Row:
    defaults = dict(family="rwkv6", wkv="WKV-6", form="scan", dtype="float32", length=8, regime="typical")
    return Row(**{**defaults, "shape": "", "y": 1e-7, "state": 1e-7, **errors})


def test_rows_fail_on_nan_and_ignore_underflowing_gradients():
    assert row_with(gradients={"r": 1e-6, "k": math.nan}).worst_gradient()[0] == "k"
    assert not row_with(gradients={"r": 1e-6, "k": math.nan}).within_bounds()
    assert not row_with(y=math.nan, gradients={"r": 1e-6}).within_bounds()
    underflow = row_with(gradients={"r": 1e-6, "w_log": 1.0}, underflowing=("w_log",))
    assert underflow.worst_gradient() == ("r", 1e-6) and underflow.within_bounds()
    assert not row_with(gradients={"r": 1e-6, "w_log": 1.0}).within_bounds()


# The tiny sweep: T = 20 (not a multiple of the chunk, 16), N = 4; every pure-JAX form in float32 and the
# form AUTO picks on CPU in bfloat16 (each form and dtype costs a compilation of its gradient).
TINY = dict(lengths=(20,), heads=2, size=4, chunk_size=16)
# Worst errors measured over every family (2026-12, this CPU): float32 y / state 1.1e-6 (WKV-4 recurrent,
# large_k), gradients 2.1e-6 (WKV-4 scan, state.max_exp); bfloat16 (the AUTO forms) y 1.7e-3 (the bf16
# rounding of y), gradients 3.5e-3 (WKV-4 recurrent, large_k). Bounds at most 10x those (bfloat16: the
# project's BOUNDS, 2.9x).
TINY_BOUNDS = {"float32": Bounds(forward=1e-5, gradient=2e-5), "bfloat16": numerics.BOUNDS["bfloat16"]}


@pytest.mark.slow
@pytest.mark.parametrize("family", SWEPT)
def test_tiny_sweep_is_within_the_bounds(family):
    """Every pure-JAX form of every swept family, in the first and the last of its regimes."""
    record = numerics.swept_family(family)
    regimes = tuple(record.numerics.regimes)[:: len(record.numerics.regimes) - 1]
    forms = tuple(form for form in record.wkv.form_names if form != "pallas")
    rows = compare_forms(family, forms, ("float32",), regimes=regimes, **TINY)
    rows += compare_forms(family, (record.wkv.auto_cpu.value,), ("bfloat16",), regimes=regimes, **TINY)
    assert len(rows) == (len(forms) + 1) * len(regimes)
    for row in rows:
        bounds = TINY_BOUNDS[row.dtype]
        assert row.y <= bounds.forward and row.state <= bounds.forward, row
        assert row.worst_gradient()[1] <= bounds.gradient, row
        assert row.within_bounds() and not row.skipped
        assert set(row.gradients) == set(numerics.gradient_names(record))
    table = markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and "**no**" not in table


def test_underflowing_gradients_are_flagged_not_counted():
    """near0 (decay ~ e^-148): the reference gradient of w_log is below float32 range."""
    rows = compare_forms("rwkv6", ("recurrent",), ("float32",), regimes=("near0",), **TINY)
    assert all(row.underflowing == ("w_log",) and "below float32 range" in row.note for row in rows)
    assert all(row.within_bounds() for row in rows)


def test_forms_over_their_length_limit_are_skipped_with_a_note():
    rows = compare_forms(
        "rwkv4", ("recurrent",), ("float32",), (8,), ("typical",), size=2, max_lengths={"recurrent": 4}
    )
    (row,) = rows
    assert row.skipped and "T > 4" in row.note and math.isnan(row.y)
    assert "| – |" in markdown_table(rows)


def test_cli_writes_csv_and_markdown_that_render_again(tmp_path):
    """Two families (their gradient columns differ), a regime one of them lacks, a form capped by length."""
    script = load_experiment("compare_numerics")
    tiny = ["--lengths", "20", "--heads", "2", "--head-size", "4", "--chunk-size", "16"]
    options = ["--families", "rwkv4,rwkv7", "--forms", "recurrent", "--dtypes", "float32", *tiny]
    limit = ["--max-length", "rwkv7:recurrent=16"]
    assert script.main(["--out", str(tmp_path), *options, "--regimes", "typical,near0", *limit]) == 0
    with open(tmp_path / "numerics.csv", newline="") as file:
        records = list(csv.DictReader(file))
    assert [(r["family"], r["regime"]) for r in records] == [
        ("rwkv4", "typical"), ("rwkv4", "near0"), ("rwkv7", "typical")
    ]  # fmt: skip
    rows = [Row.from_flat(record) for record in records]
    assert rows[1].underflowing == ("w_log",) and all(row.within_bounds() for row in rows[:2])
    assert rows[2].skipped and set(rows[2].gradients) == {*WKV7_FORMS.input_names, "state"}
    markdown = (tmp_path / "numerics.md").read_text()
    assert markdown.count("| rwkv4 | WKV-4 | recurrent | float32 |") == 3  # one summary row and two rows
    assert "| rwkv7 | typical |" in markdown and "rwkv7 T > 16 for recurrent" in markdown
    (tmp_path / "numerics.md").unlink()
    assert script.main(["--out", str(tmp_path), "--render", str(tmp_path / "numerics.csv")]) == 0
    assert (tmp_path / "numerics.md").read_text().split("## Regimes")[1] == markdown.split("## Regimes")[1]


def test_cli_rejects_unknown_names():
    script = load_experiment("compare_numerics")
    with pytest.raises(SystemExit):
        script.parse_args(["--out", "x", "--forms", "fast"])
    with pytest.raises(SystemExit):
        script.parse_args(["--out", "x", "--families", "v4"])
    with pytest.raises(SystemExit):
        script.parse_args(["--out", "x", "--max-length", "scan"])
