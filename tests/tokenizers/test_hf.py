"""HFTokenizer on a tokenizer.json built here with the tokenizers library (no downloads)."""

import pathlib

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from rwkv_jax.tokenizers import HFTokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "RWKV is a recurrent network that trains like a transformer.",
    "Ünïcödé text, 中文, and emoji 😀 should survive the round trip.",
] * 20


def build_tokenizer_json(folder: pathlib.Path) -> pathlib.Path:
    """A byte-level BPE (GPT-NeoX style) with <|endoftext|> as id 0, saved as folder/tokenizer.json."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    path = folder / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory) -> HFTokenizer:
    return HFTokenizer(build_tokenizer_json(tmp_path_factory.mktemp("hf")))


@pytest.mark.parametrize(
    "text", ["", "The quick brown fox", "RWKV trains like a transformer. 中文 😀", " new words"]
)
def test_round_trip(hf_tokenizer, text):
    ids = hf_tokenizer.encode(text)
    assert all(0 <= i < hf_tokenizer.vocab_size for i in ids)
    assert hf_tokenizer.decode(ids) == text
    assert hf_tokenizer.decode_bytes(ids) == text.encode("utf-8")
    assert hf_tokenizer.encode_batch([text, text]) == [ids, ids]


def test_vocabulary_size_and_end_of_text(hf_tokenizer):
    vocab = hf_tokenizer._tokenizer.get_vocab()
    assert 256 < hf_tokenizer.vocab_size == len(vocab) == 1 + max(vocab.values())
    assert hf_tokenizer.eos_id == 0
    assert hf_tokenizer.encode("The quick") != hf_tokenizer.encode("the quick")


def test_bad_ids_and_missing_file(hf_tokenizer, tmp_path):
    size = hf_tokenizer.vocab_size
    with pytest.raises(ValueError, match=f"token id {size} cannot be decoded"):
        hf_tokenizer.decode([1, size])
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json"):
        HFTokenizer(tmp_path / "absent.json")
