"""binidx round trip, packing, and a batch order that is a pure function of (seed, step)."""

import numpy as np
import pytest

from rwkv_jax.training.binidx import MAGIC, BinIdx, write_binidx
from rwkv_jax.training.data import BatchOrder, eval_batches, is_binidx, load_stream, pack_documents


def test_binidx_round_trip(tmp_path):
    docs = [np.array([5, 6, 7], np.uint16), np.array([], np.uint16), np.array([65535, 0], np.uint16)]
    write_binidx(tmp_path / "ds", docs)
    ds = BinIdx(tmp_path / "ds")
    assert len(ds) == 3 and ds.dtype == np.uint16
    assert [ds[i].tolist() for i in range(3)] == [d.tolist() for d in docs]
    assert ds.sizes.tolist() == [3, 0, 2] and ds.pointers.tolist() == [0, 6, 6]
    assert ds.doc_idx.tolist() == [0, 1, 2, 3]
    assert ds.tokens.tolist() == [5, 6, 7, 65535, 0]
    raw = (tmp_path / "ds.idx").read_bytes()
    assert raw[:9] == MAGIC and raw[9:17] == (1).to_bytes(8, "little") and raw[17] == 8  # uint16 code
    assert not list(tmp_path.glob("*.tmp"))


def test_binidx_rejects_a_bad_index(tmp_path):
    write_binidx(tmp_path / "ds", [np.arange(4, dtype=np.uint8)], np.uint8)
    (tmp_path / "ds.idx").write_bytes(b"NOTANIDX" + (tmp_path / "ds.idx").read_bytes()[8:])
    with pytest.raises(ValueError, match="not a binidx index"):
        BinIdx(tmp_path / "ds")
    with pytest.raises(FileNotFoundError, match=r"missing\.idx"):
        BinIdx(tmp_path / "missing")
    with pytest.raises(ValueError, match="outside the range of uint8"):
        write_binidx(tmp_path / "big", [np.array([300])], np.uint8)


def test_binidx_and_text_streams_pack_documents_with_end_tokens(tmp_path):
    write_binidx(tmp_path / "ds", [np.array([1, 2, 0], np.uint8), np.array([3, 0], np.uint8)], np.uint8)
    assert is_binidx(tmp_path / "ds")
    assert load_stream(tmp_path / "ds").tolist() == [1, 2, 0, 3, 0]
    assert pack_documents([np.array([7, 8]), np.array([9])]).tolist() == [7, 8, 0, 9, 0]


def test_batch_order_is_a_pure_function_of_seed_and_step():
    stream = np.arange(1000, dtype=np.int32)
    first, second = BatchOrder(stream, 10, 4, seed=3), BatchOrder(stream, 10, 4, seed=3)
    for step in (0, 7, 24, 25, 60):  # 99 windows: steps 24/25 straddle the first epoch boundary
        np.testing.assert_array_equal(first.batch(step), second.batch(step))
    assert not np.array_equal(first.batch(0), BatchOrder(stream, 10, 4, seed=4).batch(0))
    batch = first.batch(5)
    assert batch.shape == (4, 11) and batch.dtype == np.int32
    np.testing.assert_array_equal(batch[:, 1:] - batch[:, :-1], 1)  # consecutive tokens of the stream


def test_batch_order_visits_every_window_once_per_epoch():
    order = BatchOrder(np.arange(101, dtype=np.int32), 10, 5, seed=0)  # 10 windows, 2 steps per epoch
    seen = np.concatenate([order.window_ids(s) for s in range(2)])
    assert sorted(seen.tolist()) == list(range(10))
    assert sorted(np.concatenate([order.window_ids(s) for s in (2, 3)]).tolist()) == list(range(10))


def test_eval_batches_are_fixed_and_spread_over_the_stream():
    stream = np.arange(1001, dtype=np.int32)
    batches = eval_batches(stream, 10, 4, 3)
    assert len(batches) == 3 and all(b.shape == (4, 11) for b in batches)
    starts = np.concatenate([b[:, 0] for b in batches])
    assert starts[0] == 0 and starts[-1] == 990
    assert all(np.array_equal(a, b) for a, b in zip(batches, eval_batches(stream, 10, 4, 3), strict=True))
