"""rwkv_jax.numerics: the error metric, the random inputs of each decay regime, and a tiny sweep of the
pure-JAX forms against the float64 references."""

import csv
import importlib.util
import math
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from rwkv_jax import numerics
from rwkv_jax.numerics import BOUNDS, Row, compare_forms, make_inputs, markdown_table, relative_error


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


def decays_of(family: str, inputs: tuple) -> np.ndarray:
    return np.asarray(inputs[0] if family == "v4" else inputs[3])


@pytest.mark.parametrize(
    ("family", "regime"), [(f, r) for f in numerics.FAMILIES for r in numerics.REGIMES[f]]
)
def test_decays_lie_in_the_regime_range(family, regime):
    inputs = make_inputs(family, length=32, regime=regime, seed=3)
    w_log = decays_of(family, inputs)
    low, high = numerics.DECAY_LOG_RANGES["typical" if regime == "large_k" else regime]
    assert w_log.dtype == np.float32
    # w_log = -exp(x), x in [low, high]; float32 rounding allowed for.
    assert np.all(w_log <= -np.exp(low) * (1 - 1e-6)) and np.all(w_log >= -np.exp(high) * (1 + 1e-6))


def test_named_regimes_reach_their_extremes():
    near0 = make_inputs("v6", length=64, regime="near0")[3]
    near1 = make_inputs("v6", length=64, regime="near1")[3]
    assert np.all(np.exp(np.asarray(near0, np.float64)) < 1e-39)  # below float32's smallest normal
    assert np.all(np.asarray(near1) >= -1e-6)
    w_mixed = np.asarray(make_inputs("v6", length=256, regime="mixed")[3])
    assert w_mixed.min() < -50 and w_mixed.max() > -1e-5  # spans both ends


def test_large_keys_only_in_the_large_k_regime():
    k_large = np.asarray(make_inputs("v4", length=256, regime="large_k")[2])
    k_typical = np.asarray(make_inputs("v4", length=256, regime="typical")[2])
    assert 40 < np.abs(k_large).max() <= numerics.LARGE_KEY
    assert np.abs(k_typical).max() < 8


@pytest.mark.parametrize("dtype", numerics.DTYPES)
def test_inputs_have_the_contract_shapes_and_dtypes(dtype):
    r, k, v, w_log, u, state = make_inputs("v6", batch=2, length=5, heads=3, size=4, dtype=dtype)
    assert r.shape == k.shape == v.shape == w_log.shape == (2, 5, 3, 4)
    assert u.shape == (3, 4) and state.shape == (2, 3, 4, 4)
    assert r.dtype == k.dtype == v.dtype == jnp.dtype(dtype)
    assert w_log.dtype == u.dtype == state.dtype == jnp.float32
    w_log, u, k, v, num, den, max_exp = make_inputs("v4", batch=2, length=5, heads=3, size=4, dtype=dtype)
    assert w_log.shape == u.shape == (12,) and k.shape == v.shape == (2, 5, 12)
    assert num.shape == den.shape == max_exp.shape == (2, 12) and np.all(np.asarray(den) > 0)
    assert k.dtype == v.dtype == jnp.dtype(dtype) and num.dtype == jnp.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(family="v5"), "unknown family 'v5'"),
        (dict(family="v6", regime="large_k"), "unknown regime for v6 'large_k'"),
        (dict(family="v4", dtype="float16"), "unknown dtype 'float16'"),
        (dict(family="v4", length=0), "length must be >= 1"),
    ],
)
def test_bad_input_requests_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_inputs(**kwargs)


def test_sweep_rejects_forms_a_family_lacks():
    with pytest.raises(ValueError, match="unknown form of v4 'chunked'"):
        compare_forms("v4", forms=("chunked",))


def row_with(**errors) -> Row:
    defaults = dict(family="v6", form="scan", dtype="float32", length=8, regime="typical", shape="", y=1e-7)
    return Row(**{**defaults, "state": 1e-7, **errors})


def test_rows_fail_on_nan_and_ignore_underflowing_gradients():
    assert row_with(gradients={"r": 1e-6, "k": math.nan}).worst_gradient()[0] == "k"
    assert not row_with(gradients={"r": 1e-6, "k": math.nan}).within_bounds()
    assert not row_with(y=math.nan, gradients={"r": 1e-6}).within_bounds()
    underflow = row_with(gradients={"r": 1e-6, "w_log": 1.0}, underflowing=("w_log",))
    assert underflow.worst_gradient() == ("r", 1e-6) and underflow.within_bounds()
    assert not row_with(gradients={"r": 1e-6, "w_log": 1.0}).within_bounds()


@pytest.mark.parametrize(
    ("family", "forms"), [("v4", ("recurrent", "scan")), ("v6", ("recurrent", "scan", "chunked"))]
)
def test_tiny_sweep_is_within_the_bounds(family, forms):
    """T = 20 is not a multiple of the chunk. near0: grad w_log underflows float32 (flagged only)."""
    rows = compare_forms(
        family, forms, lengths=(20,), regimes=("mixed", "near0"), heads=2, size=4, chunk_size=16
    )
    assert len(rows) == len(forms) * 2 * len(numerics.DTYPES)
    for row in rows:
        bounds = BOUNDS[row.dtype]
        assert row.y <= bounds.forward and row.state <= bounds.forward, row
        assert row.worst_gradient()[1] <= bounds.gradient, row
        assert row.within_bounds() and not row.skipped
        assert set(row.gradients) == set(numerics.INPUT_NAMES[family])
    near0 = [row for row in rows if row.regime == "near0"]
    assert all(row.underflowing == ("w_log",) and "below float32 range" in row.note for row in near0)
    table = markdown_table(rows)
    assert table.count("\n") == len(rows) + 1 and "**no**" not in table


def test_forms_over_their_length_limit_are_skipped_with_a_note():
    rows = compare_forms(
        "v4", ("recurrent",), ("float32",), (8,), ("typical",), size=2, max_lengths={"recurrent": 4}
    )
    (row,) = rows
    assert row.skipped and "T > 4" in row.note and math.isnan(row.y)
    assert "| – |" in markdown_table(rows)


def load_compare_numerics():
    path = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "compare_numerics.py"
    spec = importlib.util.spec_from_file_location("compare_numerics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_csv_and_markdown_that_render_again(tmp_path):
    script = load_compare_numerics()
    options = ["--families", "v4", "--forms", "recurrent", "--dtypes", "float32", "--lengths", "4,8"]
    assert script.main(["--out", str(tmp_path), *options, "--regimes", "typical,near0"]) == 0
    with open(tmp_path / "numerics.csv", newline="") as file:
        records = list(csv.DictReader(file))
    assert [(r["length"], r["regime"]) for r in records] == [
        ("4", "typical"), ("4", "near0"), ("8", "typical"), ("8", "near0")
    ]  # fmt: skip
    rows = [Row.from_flat(record) for record in records]
    assert rows[1].underflowing == ("w_log",) and all(row.within_bounds() for row in rows)
    markdown = (tmp_path / "numerics.md").read_text()
    assert markdown.count("| v4 | recurrent | float32 |") == 5  # one summary row and four rows
    (tmp_path / "numerics.md").unlink()
    assert script.main(["--out", str(tmp_path), "--render", str(tmp_path / "numerics.csv")]) == 0
    assert (tmp_path / "numerics.md").read_text().split("## Worst")[1] == markdown.split("## Worst")[1]


def test_cli_rejects_unknown_names():
    script = load_compare_numerics()
    with pytest.raises(SystemExit):
        script.parse_args(["--out", "x", "--forms", "fast"])
