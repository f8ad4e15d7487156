"""experiments/bench_kernels.py: every family's forms run through their WKV table, one row per pass."""

from tests.conftest import load_experiment


def test_bench_kernels_times_both_passes_of_each_requested_form_of_every_family(capsys):
    bench = load_experiment("bench_kernels")
    argv = ["--forms", "recurrent", "--length", "8", "--heads", "1", "--head-size", "8", "--repeats", "1"]
    assert bench.main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    families, passes = ("rwkv4", "rwkv6", "rwkv7"), ("fwd", "fwd+bwd")
    assert [tuple(row[:3]) for row in rows] == [(f, "recurrent", p) for f in families for p in passes]
    assert all(float(row[3]) > 0 and float(row[6]) > 0 for row in rows)  # milliseconds, FLOP per byte
