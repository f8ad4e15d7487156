"""ByteTokenizer and get_tokenizer."""

import numpy as np
import pytest

from rwkv_jax.tokenizers import ByteTokenizer, HFTokenizer, WorldTokenizer, get_tokenizer

TEXTS = ["", "hello", "héllo wörld", "中文 😀 \x00\x1f\n", "👩\u200d💻 e\u0301"]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_ids_are_the_utf8_bytes_and_round_trip(text):
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode_bytes(np.asarray(ids, np.int64)) == text.encode("utf-8")


def test_byte_decode_of_a_split_character_follows_errors():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("é")[:1]
    assert tokenizer.decode(ids) == "\ufffd"
    assert tokenizer.decode(ids, errors="ignore") == ""
    with pytest.raises(UnicodeDecodeError):
        tokenizer.decode(ids, errors="strict")


@pytest.mark.parametrize("ids", [[256], [-1], [1.5], [[1, 2]]])
def test_byte_decode_rejects_ids_outside_the_vocabulary(ids):
    with pytest.raises(ValueError, match=r"token id|integers"):
        ByteTokenizer().decode_bytes(ids)


def test_encode_rejects_bytes():
    with pytest.raises(TypeError, match="str"):
        ByteTokenizer().encode(b"abc")


def test_get_tokenizer_by_name_and_path(tmp_path):
    assert isinstance(get_tokenizer("byte"), ByteTokenizer)
    assert isinstance(get_tokenizer("world"), WorldTokenizer)
    from tests.tokenizers.test_hf import build_tokenizer_json

    assert isinstance(get_tokenizer(build_tokenizer_json(tmp_path)), HFTokenizer)
    with pytest.raises(ValueError, match="unknown tokenizer 'nope'"):
        get_tokenizer("nope")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer(tmp_path / "missing.json")
