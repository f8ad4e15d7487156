"""The tokenizer interface shared by every tokenizer of rwkv_jax.

A tokenizer maps text to token ids and ids back to bytes. Decoding goes through bytes because a token of a
byte-level vocabulary can hold part of a UTF-8 sequence: ``decode_bytes`` is exact, ``decode`` turns the bytes
into text with the usual ``errors`` policy of :meth:`bytes.decode`.
"""

import abc
from collections.abc import Iterable, Sequence

import numpy as np


class Tokenizer(abc.ABC):
    """Text <-> token ids.

    Attributes:
      vocab_size: V, the number of token ids (ids are ``0 <= id < vocab_size``; the embedding has V rows).
      eos_id: the id that ends a document, or None where the vocabulary has none.
    """

    vocab_size: int
    eos_id: int | None = None

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``."""

    @abc.abstractmethod
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes of ``ids``; raises ValueError naming the first id that has no bytes."""

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """The text of ``ids``: their bytes decoded as UTF-8.

        ``errors`` is the policy of :meth:`bytes.decode` for bytes that are not valid UTF-8 (ids that end
        inside a multi-byte character, say): "replace" (U+FFFD), "strict" (UnicodeDecodeError), "ignore",
        "backslashreplace", "surrogateescape".
        """
        return self.decode_bytes(ids).decode("utf-8", errors)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``."""
        return [self.encode(text) for text in texts]


def require_str(text: object) -> str:
    """Returns ``text``; raises TypeError for anything but a str (bytes included: encode them with a str)."""
    if not isinstance(text, str):
        raise TypeError(f"encode expects a str, got {type(text).__name__}")
    return text


def as_id_list(ids: Iterable[int], vocab_size: int) -> list[int]:
    """``ids`` (any iterable or array of integers) as a list of ints; ValueError unless all lie in [0, V)."""
    array = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
    if array.size == 0:
        return []
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(
            f"token ids must be a flat sequence of integers, got {array.dtype} of shape {array.shape}"
        )
    bad = (array < 0) | (array >= vocab_size)
    if bad.any():
        raise bad_id_error(array[bad][0], vocab_size)
    return array.tolist()


def bad_id_error(token_id: object, vocab_size: int, detail: str = "") -> ValueError:
    """The ValueError for an id that cannot be decoded."""
    return ValueError(f"token id {token_id} cannot be decoded: expected an int in [0, {vocab_size}){detail}")
