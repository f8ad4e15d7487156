"""Context parallelism (``mesh.context``): the sharded step equals one device, and the config refuses what it
cannot split. The full sweep (context 2, 4, 8, mixed with data/fsdp, 512 tokens) is
``experiments/check_context_parallel.py`` (docs/context_parallel.md)."""

import pytest

from rwkv_jax.sharding import make_mesh
from rwkv_jax.training.config import ConfigError, validate
from tests.training.conftest import tiny_config
from tests.training.fake_devices import run_with_devices

SWEEP = """
import sys
sys.argv = ["check", "--meshes", "2x1x4", "--seq-len", "32", "--batch", "4", "--wkv-contexts", "2", "8"]
from tests.conftest import load_experiment
load_experiment("check_context_parallel").main()
"""


@pytest.mark.slow
def test_wkv_split_over_context_matches_float64_and_finch_goose_equal_one_device(tmp_path):
    out = run_with_devices(SWEEP, 8, tmp_path, timeout=300)
    wkv_worst = float(out.split("worst WKV relative error vs float64")[1].split()[0])
    assert wkv_worst < 1e-6, out  # measured 1.1e-7 (WKV-7; decays near 0 and 1 at shard edges)
    worst = float(out.split("worst relative error")[1])
    # Measured 4.2e-6 (Finch 2x1x4, time_maa_k: a sum over tokens that cancels; changing the chunk size
    # on one device moves it by 2.4e-6), float32.
    assert worst < 1e-5, out


@pytest.mark.parametrize(
    ("family", "seq_len", "document_starts", "expected"),
    [
        ("rwkv4", 64, False, "Finch, Goose"),
        ("rwkv7", 48, False, "divides the window"),
        ("rwkv6", 64, True, "document_starts"),
    ],
)
def test_context_the_family_or_window_cannot_split_is_refused(family, seq_len, document_starts, expected):
    config = tiny_config(("unused", "unused"), family=family)
    config.mesh.data, config.mesh.context = 1, 2
    if "chunk_size" in config.model:  # RWKV-4's tiny model runs the recurrent form, without chunks
        config.model.chunk_size = 16
    config.data.seq_len, config.data.document_starts = seq_len, document_starts
    with pytest.raises(ConfigError, match=expected):
        validate(config)


def test_make_mesh_has_a_context_axis():
    mesh = make_mesh(1, 1, 1, context=1)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1, "context": 1}
