"""MetricWriter: TensorBoard events without importing PyTorch (tensorboardX would, 2-3 s of every run's
start), and PyTorch still importable after."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = """
import pathlib, sys
from rwkv_jax.training.metrics import MetricWriter
writer = MetricWriter(sys.argv[1])
writer.write(1, loss=2.5)
writer.close()
events = list(pathlib.Path(sys.argv[1], "tensorboard").glob("events.out.tfevents.*"))
print("torch imported:", "torch" in sys.modules, "event bytes:", sum(p.stat().st_size for p in events))
import torch
print("torch", torch.__version__)
"""


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = done.stdout.splitlines()[-2:]
    assert first.startswith("torch imported: False event bytes:") and int(first.split()[-1]) > 0, first
    assert second.startswith("torch "), second
