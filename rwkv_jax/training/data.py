"""Token streams and the batch order: text or binidx in, ``[B, T + 1]`` int32 windows out.

Documents are packed back to back, each followed by the end-of-document token (id 0, RWKV-LM's convention:
``<|endoftext|>`` in the World and Pile vocabularies, the unused byte 0 for byte-level models), into one
token stream. A training sequence is a window of ``seq_len + 1`` consecutive tokens (inputs ``[:-1]``, targets
``[1:]``); the stream is cut into non-overlapping windows and each epoch visits them in a permutation drawn
from ``(seed, epoch)``. The batch at a step is therefore a pure function of ``(seed, step)``: a resumed run
reads exactly the batches an uninterrupted one would.

A window holds pieces of several documents. With ``data.document_starts`` (off for pretraining, on in
``configs/finetune.py``) the model is given :func:`document_starts` of each window and resets its state at
every document's first token, so packed samples do not see each other.
"""

import functools
import os
import pathlib

import jax.numpy as jnp
import numpy as np

from rwkv_jax.array_typing import Array
from rwkv_jax.training.binidx import BinIdx

END_OF_DOCUMENT = 0


def is_binidx(path: str | os.PathLike) -> bool:
    """True when ``path`` is a binidx prefix (``path.idx`` exists)."""
    return pathlib.Path(str(path) + ".idx").is_file()


def text_files(path: str | os.PathLike) -> list[pathlib.Path]:
    """``path`` itself if it is a file, else every ``*.txt`` under it (sorted, so the order is fixed)."""
    path = pathlib.Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if files:
            return files
        raise FileNotFoundError(f"no .txt files under {path}")
    raise FileNotFoundError(f"data path {path} is neither a binidx prefix, a text file nor a folder")


def pack_documents(documents: list[np.ndarray]) -> np.ndarray:
    """Concatenates 1-D token arrays, each followed by the end-of-document token, into one int32 stream."""
    eod = np.array([END_OF_DOCUMENT], np.int32)
    pieces = [piece for doc in documents for piece in (np.asarray(doc, np.int32), eod)]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


def document_starts(inputs: Array) -> Array:
    """``[B, T]`` bool: True at each input token that begins a document (the token after an end-of-document
    token; the end token itself closes the document before it, whose last target is the next document's
    first token). False at t = 0: a window starts from the initial state anyway.

    ``inputs [B, T]`` int (a batch's ``[:, :-1]``); works on traced arrays (computed inside the train step).
    """
    after_end = inputs[:, :-1] == END_OF_DOCUMENT
    return jnp.concatenate([jnp.zeros_like(after_end[:, :1]), after_end], axis=1)


def encode_text(text: str, tokenizer: str) -> np.ndarray:
    """Token ids of ``text`` with one of rwkv_jax.tokenizers' tokenizers ("byte", "world" or a file path)."""
    from rwkv_jax.tokenizers import get_tokenizer  # imported here: binidx-only runs need no tokenizer

    return np.asarray(get_tokenizer(tokenizer).encode(text), np.int32)


def load_stream(path: str | os.PathLike, tokenizer: str = "byte") -> np.ndarray:
    """The token stream of a binidx dataset (memory-mapped, as stored) or of text file(s) (tokenized now).

    A binidx dataset is read as the one stream its ``.bin`` holds (its documents already carry their end
    tokens, as RWKV-LM's ``make_data`` writes them); each text file is one document.
    """
    if is_binidx(path):
        return BinIdx(path).tokens
    documents = [encode_text(file.read_text(encoding="utf-8"), tokenizer) for file in text_files(path)]
    return pack_documents(documents)


class BatchOrder:
    """Training batches of ``batch_size`` windows of ``seq_len + 1`` tokens, a pure function of (seed, step).

    Args:
      stream: 1-D token ids (any integer dtype; a memmap is read lazily).
      seq_len: tokens per input sequence.
      batch_size: windows per batch.
      seed: selects the permutation of each epoch.
    """

    def __init__(self, stream: np.ndarray, seq_len: int, batch_size: int, seed: int):
        if stream.ndim != 1:
            raise ValueError(f"token stream must be 1-D, got shape {stream.shape}")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        self.num_windows = (len(stream) - 1) // seq_len
        if self.num_windows < 1:
            raise ValueError(f"token stream of {len(stream)} tokens is too short for seq_len {seq_len}")
        self.stream, self.seq_len, self.batch_size, self.seed = stream, seq_len, batch_size, seed

    @functools.lru_cache(maxsize=2)  # noqa: B019 (one order per run; the cache lives as long as it)
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)

    def window_ids(self, step: int) -> np.ndarray:
        """The window indices of batch ``step`` (``[batch_size]``, int64)."""
        sample = step * self.batch_size + np.arange(self.batch_size)
        epochs, positions = np.divmod(sample, self.num_windows)
        return np.array([self._permutation(int(e))[p] for e, p in zip(epochs, positions, strict=True)])

    def batch(self, step: int) -> np.ndarray:
        """Batch ``step``: ``[batch_size, seq_len + 1]`` int32 tokens."""
        return windows(self.stream, self.window_ids(step), self.seq_len)


def windows(stream: np.ndarray, ids: np.ndarray, seq_len: int) -> np.ndarray:
    """The windows ``stream[i * seq_len : i * seq_len + seq_len + 1]`` for ``i`` in ``ids``, as int32."""
    return np.stack([np.asarray(stream[i * seq_len : i * seq_len + seq_len + 1], np.int32) for i in ids])


def eval_batches(stream: np.ndarray, seq_len: int, batch_size: int, num_batches: int) -> list[np.ndarray]:
    """A fixed set of validation batches: windows spread evenly over the stream (the same every pass).

    Asks for at most as many windows as the stream holds; returns fewer batches when it is short.
    """
    total = (len(stream) - 1) // seq_len
    if total < 1:
        raise ValueError(f"validation stream of {len(stream)} tokens is too short for seq_len {seq_len}")
    count = min(num_batches * batch_size, total - total % batch_size) or total
    ids = np.linspace(0, total - 1, count).round().astype(np.int64)
    return [windows(stream, chunk, seq_len) for chunk in np.array_split(ids, max(1, count // batch_size))]
