"""experiments/bench_kernels.py: every family's forms run through their WKV table, one row per pass."""

import importlib.util
import pathlib

BENCH = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "bench_kernels.py"


def load_bench_kernels():
    spec = importlib.util.spec_from_file_location("experiments_bench_kernels", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_kernels_times_both_passes_of_each_requested_form_of_every_family(capsys):
    bench = load_bench_kernels()
    argv = ["--forms", "recurrent", "--length", "8", "--heads", "1", "--head-size", "8", "--repeats", "1"]
    assert bench.main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    families, passes = ("rwkv4", "rwkv6", "rwkv7"), ("fwd", "fwd+bwd")
    assert [tuple(row[:3]) for row in rows] == [(f, "recurrent", p) for f in families for p in passes]
    assert all(float(row[3]) > 0 and float(row[6]) > 0 for row in rows)  # milliseconds, FLOP per byte
