"""HFTokenizer: a Hugging Face ``tokenizers`` tokenizer.json (e.g. GPT-NeoX 20B of the RWKV-4 Pile models)."""

import pathlib
from collections.abc import Iterable, Sequence

import tokenizers as hf_tokenizers

from rwkv_jax.tokenizers.base import Tokenizer, as_id_list, require_str

# Names that end a document in the common tokenizer.json files, first match wins.
EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>")


class TokenizerFileError(ValueError):
    """A tokenizer.json that the ``tokenizers`` library cannot load; the message names the file."""


def _load(path: pathlib.Path) -> hf_tokenizers.Tokenizer:
    """``Tokenizer.from_file(path)``; its errors (Rust errors, panics too) as TokenizerFileError."""
    try:
        return hf_tokenizers.Tokenizer.from_file(str(path))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # a Rust panic surfaces as pyo3's PanicException, a BaseException
        raise TokenizerFileError(
            f"{path}: not a tokenizer.json the tokenizers library can load ({e})"
        ) from None


class HFTokenizer(Tokenizer):
    """Wraps ``tokenizers.Tokenizer.from_file(path)``; no special tokens are added on encoding.

    A file the library cannot load raises TokenizerFileError (a ValueError) naming it.

    ``decode_bytes`` is the UTF-8 of the library's decoded text: a byte-level BPE vocabulary that splits a
    character across ids gives U+FFFD there (the library decodes to str), so ``decode(errors=...)`` cannot
    see the raw bytes of such a split.
    """

    def __init__(self, path: str | pathlib.Path):
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        self.path = path
        self._tokenizer = _load(path)
        # One past the largest id: a vocabulary with gaps in its ids (the library accepts one) would otherwise
        # encode to ids >= get_vocab_size() that decode then refuses.
        ids = self._tokenizer.get_vocab(with_added_tokens=True).values()
        self.vocab_size = max(
            self._tokenizer.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1
        )
        self.eos_id = next(
            (i for i in map(self._tokenizer.token_to_id, EOS_NAMES) if i is not None),
            None,
        )

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(require_str(text), add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = [require_str(text) for text in texts]
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = as_id_list(ids, self.vocab_size)
        return self._tokenizer.decode(ids, skip_special_tokens=False).encode("utf-8")
