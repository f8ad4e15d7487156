"""BinIdx under attack: datasets written by write_binidx, then mutated, truncated or given hostile headers.

Short run (default suite):  python -m pytest -q tests/fuzz
Long run (docs/reliability.md):  RWKV_JAX_FUZZ_EXAMPLES=2000 python -m pytest -q tests/fuzz

Every dataset must load, with every sequence inside the .bin file and as long as its size says, or raise
BinIdxFormatError naming the file, within the bounds of tests/fuzz/harness.py.
"""

import pathlib
import struct
import time

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from rwkv_jax.training.binidx import (
    _HEADER,
    DTYPE_CODES,
    MAGIC,
    VERSION,
    BinIdx,
    BinIdxFormatError,
    write_binidx,
)
from tests.fuzz import harness
from tests.fuzz.harness import FUZZ

# The index is read whole (1x); sizes, pointers and doc_idx are views of it; checks make a few temporaries.
MEMORY_FACTOR = 8

documents = st.lists(st.lists(st.integers(0, 255), max_size=20).map(np.array), max_size=6)
dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64])


def check_binidx(prefix: pathlib.Path) -> BinIdx | BinIdxFormatError:
    """The fuzz property for BinIdx: loads with every sequence in bounds, or raises naming the files."""
    outcome = harness.check_reader(BinIdx, prefix, BinIdxFormatError, memory_factor=MEMORY_FACTOR)
    if isinstance(outcome, BinIdx):
        for i in range(len(outcome)):
            assert len(outcome[i]) == outcome.sizes[i]
    return outcome


@FUZZ
@given(docs=documents, dtype=dtypes, data=st.data())
def test_mutated_binidx_loads_or_raises_binidx_format_error(tmp_path, docs, dtype, data):
    prefix = tmp_path / f"ds-{time.perf_counter_ns()}"
    write_binidx(prefix, docs, dtype)
    suffix = data.draw(st.sampled_from([".idx", ".idx", ".bin"]), label="file")
    original = pathlib.Path(str(prefix) + suffix).read_bytes()
    regions = [(0, _HEADER.size)] if suffix == ".idx" else []
    edit_list = data.draw(harness.edits(len(original), regions), label="edits")
    pathlib.Path(str(prefix) + suffix).write_bytes(harness.mutate(original, edit_list))
    check_binidx(prefix)


HOSTILE_COUNTS = st.one_of(st.integers(0, 8), st.sampled_from([2**31, 2**32, 2**60, 2**64 - 1]))


@FUZZ
@given(
    code=st.one_of(st.sampled_from(sorted(DTYPE_CODES)), st.integers(0, 255)),
    version=st.sampled_from([VERSION, VERSION, 0, 2, 2**64 - 1]),
    count=HOSTILE_COUNTS,
    n_docs=HOSTILE_COUNTS,
    sizes=st.lists(st.integers(-(2**31), 2**31 - 1) | st.integers(0, 8), max_size=8),
    pointers=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 64), max_size=8),
    doc_idx=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 8), max_size=9),
    bin_bytes=st.integers(0, 256),
)
def test_hand_written_index_loads_or_raises_binidx_format_error(
    tmp_path, code, version, count, n_docs, sizes, pointers, doc_idx, bin_bytes
):
    """An index written by hand in the Megatron/RWKV-LM layout, every field free."""
    prefix = tmp_path / f"hand-{time.perf_counter_ns()}"
    header = _HEADER.pack(MAGIC, version, code, count, n_docs)
    body = struct.pack(f"<{len(sizes)}i", *sizes) + struct.pack(f"<{len(pointers)}q", *pointers)
    body += struct.pack(f"<{len(doc_idx)}q", *doc_idx)
    pathlib.Path(str(prefix) + ".idx").write_bytes(header + body)
    pathlib.Path(str(prefix) + ".bin").write_bytes(bytes(bin_bytes))
    check_binidx(prefix)


def test_unmutated_dataset_loads(tmp_path):
    """The fuzzer's starting point loads: a fuzz test whose every input fails would test nothing."""
    docs = [np.arange(5), np.arange(3) + 7, np.zeros(0, np.int64)]
    write_binidx(tmp_path / "ds", docs, np.uint16)
    ds = check_binidx(tmp_path / "ds")
    assert [ds[i].tolist() for i in range(len(ds))] == [d.tolist() for d in docs]


def test_index_with_a_negative_size_or_a_stray_pointer_is_refused(tmp_path):
    """Both used to load, giving a wrong or short sequence without an error."""
    write_binidx(tmp_path / "ds", [np.arange(4), np.arange(4)], np.uint8)
    idx = bytearray((tmp_path / "ds.idx").read_bytes())
    struct.pack_into("<q", idx, _HEADER.size + 8 + 8, 1000)  # pointer of sequence 1: far past the end
    (tmp_path / "ds.idx").write_bytes(bytes(idx))
    assert isinstance(check_binidx(tmp_path / "ds"), BinIdxFormatError)
