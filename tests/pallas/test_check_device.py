"""experiments/check_device.py: the smoke run on CPU (``--interpret --small``, Pallas interpreter) prints the
table and the verdicts and writes the JSON; the verdict logic on made-up rows (a hardware pass, a failure)."""

import json
import math
import os
import pathlib
import subprocess
import sys
from types import ModuleType

import pytest

from rwkv_jax.numerics import Row
from tests.conftest import load_experiment

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "experiments" / "check_device.py"
FORMS = {
    "WKV-4": ("recurrent", "scan", "pallas"),
    "WKV-6": ("recurrent", "scan", "chunked", "pallas"),
    "WKV-7": ("recurrent", "scan", "chunked", "pallas"),
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    """One ``--interpret --small`` run in a subprocess (about 30 s): its output and its JSON."""
    path = tmp_path_factory.mktemp("check_device") / "check.json"
    # Tiny programs: XLA's optimisations cost more compile time than they save here.
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_ENABLE_X64": "0"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--interpret", "--small", "--json", str(path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(path.read_text())


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of the Markdown table's body rows."""
    lines = [line for line in stdout.splitlines() if line.startswith("| WKV-")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.slow
def test_smoke_run_prints_one_passing_row_per_form_with_errors_and_times(smoke_run):
    done, _ = smoke_run
    header = next(line for line in done.stdout.splitlines() if line.startswith("| WKV |"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "WKV", "form", "dtype", "y", "state", "worst grad", "fwd ms", "fwd+bwd ms", "verdict", "note",
    ]  # fmt: skip
    rows = table_rows(done.stdout)
    expected = [(wkv, form) for wkv, forms in FORMS.items() for form in forms]
    assert [(r[0], r[1].removesuffix(" (kernel)")) for r in rows] == expected
    for wkv, form, dtype, y, state, grad, fwd, fwd_bwd, verdict, _ in rows:
        assert dtype == "float32"
        assert form.endswith("(kernel)") == form.startswith("pallas")
        assert float(y) <= 1e-5 and float(state) <= 1e-5, (wkv, form)
        assert float(grad.split()[0]) <= 1e-4, (wkv, form)
        assert float(fwd) > 0 and float(fwd_bwd) > 0
        assert verdict == "pass", (wkv, form)


@pytest.mark.slow
def test_smoke_run_gives_kernel_verdicts_and_verifies_no_platform(smoke_run):
    done, _ = smoke_run
    lines = done.stdout.splitlines()
    assert "kernel WKV-4: pass on cpu (float32 pass)" in lines
    assert "kernel WKV-6: pass on cpu (float32 pass)" in lines
    assert "kernel WKV-7: pass on cpu (float32 pass)" in lines
    assert "AUTO's pure-JAX form on GPU/TPU for WKV-6, chunked: float32 pass" in lines
    assert "AUTO's pure-JAX form on GPU/TPU for WKV-4, scan: float32 pass" in lines
    assert any(
        line.startswith("VERIFIED_KERNEL_PLATFORMS: leave as it is (Pallas interpreter") for line in lines
    )
    assert "frozenset" not in done.stdout


@pytest.mark.slow
def test_smoke_run_writes_every_gradient_and_the_verdicts_as_json(smoke_run):
    _, document = smoke_run
    assert document["platform"] == "cpu" and document["interpret"] is True and document["mode"] == "small"
    assert document["kernels"] == {"WKV-4": "pass", "WKV-6": "pass", "WKV-7": "pass"}
    kernel = next(f for f in document["forms"] if f["wkv"] == "WKV-6" and f["kernel"])
    assert kernel["form"] == "pallas" and kernel["verdict"] == "pass" and kernel["timing_shape"]
    (row,) = kernel["rows"]
    assert row["regime"] == "mixed" and row["ok"] is True and row["shape"] == "B=1 T=40 H=2 N=16"
    assert {key for key in row if key.startswith("grad_")} == {
        f"grad_{n}" for n in "r k v w_log u state".split()
    }
    assert document["verdict_lines"][-1].startswith("VERIFIED_KERNEL_PLATFORMS")


# ----------------------------------------------------------------------------------------------------------
# The verdicts on made-up results: what a run on hardware prints.


def made_up_row(wkv: str, form: str, dtype: str, error: float, *, skipped: bool = False) -> Row:
    return Row(
        family=wkv, wkv=wkv, form=form, dtype=dtype, length=4096, regime="mixed", shape="", y=error,
        state=error, gradients={"k": error}, skipped=skipped,
    )  # fmt: skip


def made_up_results(script: ModuleType, kernel_errors: dict[tuple[str, str], float]) -> list:
    return [
        script.FormResult(wkv, wkv, "pallas", dtype, [made_up_row(wkv, "pallas", dtype, error)])
        for (wkv, dtype), error in kernel_errors.items()
    ]


def test_every_kernel_passing_on_hardware_names_the_platform_to_add():
    script = load_experiment("check_device")
    results = made_up_results(
        script, {("WKV-4", "float32"): 1e-7, ("WKV-6", "float32"): 2e-7, ("WKV-6", "bfloat16"): 3e-3}
    )
    verdicts = script.kernel_verdicts(results)
    assert verdicts == {"WKV-4": "pass", "WKV-6": "pass"}
    line = script.final_line(verdicts, "gpu", interpret=False)
    assert line.endswith('{"WKV-4": frozenset({"gpu"}), "WKV-6": frozenset({"gpu"})}')
    table = eval(line.split(" to ", 1)[1])  # the line is Python source for forms.py
    assert table == {"WKV-4": frozenset({"gpu"}), "WKV-6": frozenset({"gpu"})}


def test_a_failing_or_unchecked_kernel_adds_nothing():
    script = load_experiment("check_device")
    results = made_up_results(script, {("WKV-4", "float32"): 1e-7, ("WKV-6", "bfloat16"): 2e-2})
    results[0].rows.append(made_up_row("WKV-4", "pallas", "float32", math.nan, skipped=True))
    assert [r.verdict() for r in results] == ["skipped", "FAIL"]
    verdicts = script.kernel_verdicts(results)
    line = script.final_line(verdicts, "tpu", interpret=False)
    assert line == "VERIFIED_KERNEL_PLATFORMS: leave as it is; not verified on tpu: WKV-4 skipped, WKV-6 FAIL"
    nan_failure = made_up_results(script, {("WKV-6", "float32"): math.nan})
    assert script.kernel_verdicts(nan_failure) == {"WKV-6": "FAIL"}


def test_without_an_accelerator_or_interpret_it_refuses(capsys):
    assert load_experiment("check_device").main(["--small"]) == 2
    assert "--interpret" in capsys.readouterr().err
