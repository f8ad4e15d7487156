"""The binidx token format of Megatron-LM / GPT-NeoX / RWKV-LM (``MMapIndexedDataset``): read and write.

A dataset is two files sharing a prefix. ``prefix.bin`` holds the tokens of every sequence back to back.
``prefix.idx`` (little endian) holds:

    magic    9 bytes   b"MMIDIDX\\x00\\x00"
    version  uint64    1
    dtype    uint8     token dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16)
    count    uint64    number of sequences
    n_docs   uint64    length of the document index
    sizes    int32[count]     tokens in each sequence
    pointers int64[count]     byte offset of each sequence in prefix.bin
    doc_idx  int64[n_docs]    index of the first sequence of each document, then ``count``

Codes 6 and 7 (floating point) exist in the format but hold no tokens, so they are rejected. The reader
checks every field against the files before using it (sizes >= 0, each sequence inside ``prefix.bin`` at an
offset that is a whole number of tokens, ``doc_idx`` non-decreasing in [0, count]) and raises
BinIdxFormatError naming the file otherwise.
"""

import os
import pathlib
import struct

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
_HEADER = struct.Struct("<9sQBQQ")


class BinIdxFormatError(ValueError):
    """A binidx dataset whose index is malformed or does not match its ``.bin`` file."""


class BinIdx:
    """A memory-mapped binidx dataset: ``len(ds)`` sequences, ``ds[i]`` the tokens of sequence ``i``.

    ``tokens`` is the whole ``.bin`` file as one memory-mapped 1-D array (no copy).
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        idx_path = pathlib.Path(self.prefix + ".idx")
        bin_path = pathlib.Path(self.prefix + ".bin")
        for path in (idx_path, bin_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"binidx file {path} not found (a dataset is PREFIX.idx + PREFIX.bin)"
                )
        raw = idx_path.read_bytes()
        if len(raw) < _HEADER.size or raw[:9] != MAGIC:
            raise BinIdxFormatError(
                f"{idx_path} is not a binidx index: expected magic {MAGIC!r}, got {raw[:9]!r}"
            )
        _, version, code, count, n_docs = _HEADER.unpack_from(raw)
        if version != VERSION:
            raise BinIdxFormatError(f"{idx_path}: binidx version {version}, expected {VERSION}")
        if code not in DTYPE_CODES:
            raise BinIdxFormatError(
                f"{idx_path}: dtype code {code} is not a token dtype; expected one of {DTYPE_CODES}"
            )
        expected = _HEADER.size + 4 * count + 8 * count + 8 * n_docs
        if len(raw) != expected:
            raise BinIdxFormatError(
                f"{idx_path}: {len(raw)} bytes, expected {expected} for {count} sequences and {n_docs} "
                "document index entries"
            )
        self.dtype = np.dtype(DTYPE_CODES[code])
        offset = _HEADER.size
        self.sizes = np.frombuffer(raw, np.int32, count, offset)
        self.pointers = np.frombuffer(raw, np.int64, count, offset + 4 * count)
        self.doc_idx = np.frombuffer(raw, np.int64, n_docs, offset + 12 * count)
        total = int(self.sizes.sum(dtype=np.int64))
        bin_bytes = bin_path.stat().st_size
        if bin_bytes != total * self.dtype.itemsize:
            raise BinIdxFormatError(
                f"{bin_path}: {bin_bytes} bytes, the index says {total} tokens of {self.dtype} "
                f"({total * self.dtype.itemsize} bytes)"
            )
        _check_index(idx_path, self.sizes, self.pointers, self.doc_idx, self.dtype.itemsize, bin_bytes)
        self.tokens = np.memmap(bin_path, dtype=self.dtype, mode="r") if total else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self.tokens[start : start + int(self.sizes[i])]


def _check_index(
    idx_path: pathlib.Path,
    sizes: np.ndarray,
    pointers: np.ndarray,
    doc_idx: np.ndarray,
    itemsize: int,
    bin_bytes: int,
) -> None:
    """Raises BinIdxFormatError unless every sequence lies inside the ``.bin`` file and doc_idx is sane.

    sizes: [count] int32 tokens; pointers: [count] int64 byte offsets; doc_idx: [n_docs] int64 sequence
    indices; itemsize: bytes per token; bin_bytes: size of the ``.bin`` file.
    """
    negative = np.flatnonzero(sizes < 0)
    if negative.size:
        i = int(negative[0])
        raise BinIdxFormatError(f"{idx_path}: sequence {i} has {sizes[i]} tokens; expected a size >= 0")
    outside = np.flatnonzero((pointers < 0) | (pointers > bin_bytes) | (pointers % itemsize != 0))
    if not outside.size:  # pointers in [0, bin_bytes] and sizes < 2**31: the ends cannot overflow int64
        outside = np.flatnonzero(pointers + sizes.astype(np.int64) * itemsize > bin_bytes)
    if outside.size:
        i = int(outside[0])
        raise BinIdxFormatError(
            f"{idx_path}: sequence {i} ({sizes[i]} tokens at byte {pointers[i]}) is not inside the "
            f"{bin_bytes}-byte .bin file at a multiple of {itemsize} bytes"
        )
    count = len(sizes)
    if doc_idx.size and (doc_idx.min() < 0 or doc_idx.max() > count or (np.diff(doc_idx) < 0).any()):
        raise BinIdxFormatError(
            f"{idx_path}: the document index must be non-decreasing sequence numbers in [0, {count}], "
            f"got {doc_idx[:8].tolist()}{'...' if doc_idx.size > 8 else ''}"
        )


def write_binidx(prefix: str | os.PathLike, documents: list[np.ndarray], dtype: np.dtype = np.uint16) -> None:
    """Writes ``documents`` (1-D token arrays, one sequence per document) as ``prefix.bin`` / ``prefix.idx``.

    Both files are written under temporary names and renamed into place, the index last, so a reader never
    sees a half-written dataset.
    """
    dtype = np.dtype(dtype)
    codes = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
    if dtype not in codes:
        raise ValueError(f"binidx token dtype {dtype} unsupported; expected one of {list(codes)}")
    arrays = [np.asarray(doc) for doc in documents]
    for i, doc in enumerate(arrays):
        if doc.ndim != 1:
            raise ValueError(f"document {i} has shape {doc.shape}; expected a 1-D token array")
        if doc.size and (doc.min() < np.iinfo(dtype).min or doc.max() > np.iinfo(dtype).max):
            raise ValueError(f"document {i} has token ids outside the range of {dtype}")
    sizes = np.array([doc.size for doc in arrays], np.int32)
    pointers = np.zeros(len(arrays), np.int64)
    np.cumsum(sizes[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    doc_idx = np.arange(len(arrays) + 1, dtype=np.int64)
    prefix = str(prefix)
    pathlib.Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    with open(prefix + ".bin.tmp", "wb") as f:
        for doc in arrays:
            f.write(doc.astype(dtype).tobytes())
    with open(prefix + ".idx.tmp", "wb") as f:
        f.write(_HEADER.pack(MAGIC, VERSION, codes[dtype], len(arrays), len(doc_idx)))
        f.write(sizes.tobytes() + pointers.tobytes() + doc_idx.tobytes())
    os.replace(prefix + ".bin.tmp", prefix + ".bin")
    os.replace(prefix + ".idx.tmp", prefix + ".idx")
