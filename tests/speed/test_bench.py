"""experiments/bench.py --small: one command writes the table's figures and the plot; the two stacks agree.
And the full run's table of chained small products, on a tiny shape."""

import json

import jax.numpy as jnp
import pytest

from rwkv_jax import lowp_matmul
from tests.conftest import load_experiment


@pytest.mark.slow
def test_small_bench_writes_every_figure_and_agrees_with_the_rwkv_package(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_JIT_ON", "0")  # the package's TorchScript compile would dominate a smoke test
    monkeypatch.delenv("RWKV_CUDA_ON", raising=False)  # the bench sets it (the package needs it set)
    bench = load_experiment("bench")
    out, picture = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["--small", "--families", "finch", "--dtypes", "float32", "--repeats", "1"]
    assert bench.main([*argv, "--json", str(out), "--plot", str(picture)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    for key in ("decode1_tok_s", "decode16_tok_s", "prefill_tok_s", "decode_bound_tok_s"):
        assert row[key] > 0
    assert set(row["compile_s"]) == {"decode1", "decode16", "prefill"}
    assert row["decode_peak_first_mib"] > 0
    assert row["decode_peak_mib"] < 1.2 * row["decode_peak_first_mib"]  # flat: measured 350 / 349 MiB
    assert picture.stat().st_size > 0
    if not bench.has_package():
        pytest.skip("BlinkDL's rwkv package is not installed: only rwkv_jax was measured")
    assert row["logits_relative_error"] < 1e-5  # measured 2.4e-7 (float32, the same .pth)


def test_chain_table_times_xla_and_the_kernel_per_product():
    """The full run's table of chained small products (docs/speed.md, "Short rows of the weights in memory
    order"), on a tiny shape: one figure per form, the kernel's where it builds."""
    table = load_experiment("bench").chain_table(64, 3, repeats=2)
    forms = {"float32 weights (XLA)"}
    if lowp_matmul.available(jnp.bfloat16):
        forms.add("bfloat16 weights, rwkv_jax.lowp_matmul (FFI kernel)")
    assert set(table) == forms
    assert all(us > 0 for us in table.values())
