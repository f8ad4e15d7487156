"""Safetensors files under attack: files written by write_safetensors, then mutated, truncated or given
hostile header values.

Short run (default suite):  python -m pytest -q tests/fuzz
Long run (docs/reliability.md):  RWKV_JAX_FUZZ_EXAMPLES=2000 python -m pytest -q tests/fuzz

Every file must read, each tensor inside the file with as many bytes as its dtype and shape say, or raise
SafetensorsFormatError naming the file, within the bounds of tests/fuzz/harness.py.
"""

import json
import time

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rwkv_jax.checkpoint.safetensors_io import SafetensorsFormatError, read_safetensors, write_safetensors
from tests.fuzz import harness
from tests.fuzz.harness import FUZZ

# The header is read and parsed (a JSON object of small dicts: a few times its size); the data is mapped.
MEMORY_FACTOR = 16


@pytest.fixture
def original(tmp_path) -> bytes:
    tensors = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([1.5, -2.0, 0.25], ml_dtypes.bfloat16),
        "h": np.ones((2, 2), np.float16),
        "i": np.arange(3, dtype=np.int64),
        "scalar": np.float64(7.0),
        "empty": np.zeros((0, 5), np.float32),
    }
    write_safetensors(tmp_path / "original.safetensors", tensors, metadata={"format": "pt"})
    return (tmp_path / "original.safetensors").read_bytes()


def check(path) -> None:
    outcome = harness.check_reader(
        read_safetensors, path, SafetensorsFormatError, memory_factor=MEMORY_FACTOR
    )
    if isinstance(outcome, dict):
        size = path.stat().st_size
        for name, array in outcome.items():
            assert isinstance(name, str) and isinstance(array, np.ndarray), name
            assert array.nbytes <= size, name


@FUZZ
@given(data=st.data())
def test_mutated_files_read_or_raise_safetensors_format_error(tmp_path, original, data):
    header_end = 8 + int.from_bytes(original[:8], "little")
    edit_list = data.draw(harness.edits(len(original), [(0, 8), (8, header_end)]), label="edits")
    path = tmp_path / f"mutated-{time.perf_counter_ns()}.safetensors"
    path.write_bytes(harness.mutate(original, edit_list))
    check(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_hostile_header_values_read_or_raise_safetensors_format_error(tmp_path, original, data):
    length = int.from_bytes(original[:8], "little")
    header = json.loads(original[8 : 8 + length])
    name = data.draw(st.sampled_from(sorted(header)), label="tensor")
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]), label="field")
    value = data.draw(json_values, label="value")
    header[name] = (
        value if field is None or not isinstance(header[name], dict) else {**header[name], field: value}
    )
    text = json.dumps(header).encode()
    path = tmp_path / f"hostile-{time.perf_counter_ns()}.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + original[8 + length :])
    check(path)


def test_the_unmutated_file_reads_back_exactly(tmp_path, original):
    (tmp_path / "x.safetensors").write_bytes(original)
    tensors = read_safetensors(tmp_path / "x.safetensors")
    assert list(tensors) == ["w", "b", "h", "i", "scalar", "empty"]
    np.testing.assert_array_equal(tensors["w"], np.arange(12, dtype=np.float32).reshape(3, 4))
    assert tensors["b"].dtype == ml_dtypes.bfloat16 and tensors["scalar"].shape == ()
