"""Tokenizers: text <-> token ids for the RWKV models.

``get_tokenizer("byte")`` (the tiny byte-level models), ``get_tokenizer("world")`` (RWKV World vocabulary of
Eagle / Finch and the World RWKV-4 models), ``get_tokenizer("path/to/tokenizer.json")`` (Hugging Face
tokenizers, e.g. GPT-NeoX 20B of the RWKV-4 Pile models). All share the interface of :class:`Tokenizer`.
"""

import pathlib

from rwkv_jax.tokenizers.base import Tokenizer
from rwkv_jax.tokenizers.byte import ByteTokenizer
from rwkv_jax.tokenizers.hf import HFTokenizer, TokenizerFileError
from rwkv_jax.tokenizers.world import VocabFormatError, WorldTokenizer

__all__ = [
    "ByteTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "TokenizerFileError",
    "VocabFormatError",
    "WorldTokenizer",
    "get_tokenizer",
]

NAMED = {"byte": ByteTokenizer, "world": WorldTokenizer}


def get_tokenizer(name_or_path: str | pathlib.Path) -> Tokenizer:
    """ "byte", "world", or the path of a tokenizer.json file."""
    if str(name_or_path) in NAMED:
        return NAMED[str(name_or_path)]()
    path = pathlib.Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return HFTokenizer(path)
    raise ValueError(
        f"unknown tokenizer {str(name_or_path)!r}: expected one of {sorted(NAMED)} or an existing .json file"
    )
