"""ByteTokenizer: one token per byte of the UTF-8 text (the tiny byte-level models)."""

from collections.abc import Iterable

from rwkv_jax.tokenizers.base import Tokenizer, as_id_list, require_str


class ByteTokenizer(Tokenizer):
    """Vocabulary of the 256 byte values: token id = byte value. No end-of-document id."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(require_str(text).encode("utf-8"))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return bytes(as_id_list(ids, self.vocab_size))
