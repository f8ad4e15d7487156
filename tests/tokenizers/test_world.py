"""WorldTokenizer: the same ids as the reference TRIE_TOKENIZER, exact bytes back, clear errors."""

import random

import numpy as np
import pytest

from rwkv_jax.tokenizers import world, world_fast
from rwkv_jax.tokenizers.world import WorldTokenizer, read_vocab
from tests.conftest import import_or_skip

# (first, last) code points of ranges with assigned characters, across the planes; surrogates excluded.
UNICODE_RANGES = [
    (0x0000, 0x007F), (0x0080, 0x07FF), (0x0800, 0x0FFF), (0x2000, 0x2BFF), (0x3000, 0x30FF),
    (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xFFFF), (0x10000, 0x1FFFF), (0x20000, 0x3134F),
    (0xE0000, 0xE01EF), (0xF0000, 0x10FFFF),
]  # fmt: skip

TEXTS = [
    "",
    "a",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "    indented\n\tcode()  \r\n\n\n   trailing   ",
    "中文文本，混合语言的句子。日本語のテキスト。한국어 문장.",
    "Ελληνικά, Русский, العربية, עברית, हिन्दी, ไทย",
    "emoji 😀 👩\u200d👩\u200d👧\u200d👦 🏳\ufe0f\u200d🌈 👍🏽 🇫🇷",
    "combining e\u0301 a\u0308 \u0915\u094d\u0937 Z\u0351\u0362\u0334",
    "".join(map(chr, range(32))) + "\x7f\x80\x9f\xa0",
    "\ufeff\ufffd\U0010ffff\U000e0001",
]


@pytest.fixture(scope="module")
def tokenizer() -> WorldTokenizer:
    return WorldTokenizer()


@pytest.fixture(scope="module")
def reference():
    module = import_or_skip("rwkv.rwkv_tokenizer", "needs the rwkv package (pip install rwkv)")
    return module.TRIE_TOKENIZER(str(world.VOCAB_FILE))


def random_text(rng: random.Random, n_chars: int) -> str:
    return (
        "".join(chr(rng.randint(*rng.choice(UNICODE_RANGES))) for _ in range(n_chars))
        .encode("utf-8", "surrogatepass")
        .decode("utf-8", "replace")
    )


def test_vocabulary_file_has_the_published_size():
    vocab = read_vocab()
    assert len(vocab) == 65529 and min(vocab) == 1 and max(vocab) == 65529
    assert WorldTokenizer.vocab_size == 65536 and WorldTokenizer.eos_id == 0


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_the_reference_and_round_trip(tokenizer, reference, text):
    ids = tokenizer.encode(text)
    assert ids == reference.encode(text)
    assert tokenizer.decode(ids) == text


@pytest.fixture(params=["python walk", "numpy", "numpy, segments walked in python"])
def either_path(request, monkeypatch):
    """Runs a test on each way of encoding: the Python trie walk of short texts, and the numpy path (pieces
    matched by numpy passes, or their greedy paths walked in Python, as for the few longest segments)."""
    monkeypatch.setattr(world, "SHORT_TEXT_BYTES", np.inf if request.param == "python walk" else 0)
    monkeypatch.setattr(world_fast, "FEW_SEGMENTS", np.inf if "segments" in request.param else 0)


def test_random_unicode_from_every_plane(tokenizer, reference, either_path):
    rng = random.Random(1)
    for n_chars in (1, 2, 3, 7, 30, 300):
        for _ in range(20):
            text = random_text(rng, n_chars)
            assert tokenizer.encode(text) == reference.encode(text), repr(text)
            assert tokenizer.decode(tokenizer.encode(text)) == text


def test_random_bytes_including_invalid_utf8(tokenizer, reference, either_path):
    rng = np.random.default_rng(2)
    for length in (1, 2, 5, 50, 2000):
        for alphabet in (256, 8):  # every byte value, and a few values so that long entries repeat
            data = bytes(rng.integers(0, 256, length) % alphabet + (0 if alphabet == 256 else 32))
            ids = tokenizer.encode_bytes(data)
            assert ids == reference.encodeBytes(data)
            assert tokenizer.decode_bytes(ids) == data


def test_long_mixed_text(tokenizer, reference, either_path):
    rng = random.Random(3)
    pieces = [*TEXTS, " the", " of the", "  ", "\n\n", "ing", "。", "😀"]
    text = "".join(rng.choice(pieces) for _ in range(3000)) + random_text(rng, 2000)
    assert tokenizer.encode(text) == reference.encode(text)
    assert tokenizer.encode(text) == reference.encode(text)  # again, from the filled piece cache


def test_cache_is_emptied_when_full_and_stays_correct(tokenizer, reference, monkeypatch):
    monkeypatch.setattr(world, "MAX_CACHED_PIECES", 50)
    monkeypatch.setattr(world, "SHORT_TEXT_BYTES", 0)
    cache = tokenizer._matcher.cache
    many = " ".join(f"word{i} {i * 7919}" for i in range(500))
    assert tokenizer.encode(many) == reference.encode(many)
    assert cache.size > 50
    few = "a few words, a few words again"
    assert tokenizer.encode(few) == reference.encode(few)
    assert 0 < cache.size <= 50


def test_cache_is_exact_when_every_key_hashes_to_one_slot(tokenizer, reference, monkeypatch):
    monkeypatch.setattr(world, "SHORT_TEXT_BYTES", 0)
    monkeypatch.setattr(world_fast.PieceCache, "_home", lambda self, keys: np.zeros(keys.shape[1], np.int64))
    tokenizer._matcher.cache.clear()
    # Pieces of one to four key words, many sharing their first bytes; some too long to be cached.
    words = [
        f"w{i % 97} sharedprefix{i % 31} {'internationalisation' * (1 + i % 2)}{i % 7}" for i in range(300)
    ]
    text = " ".join(words) + " 中文 " * 20
    for _ in range(2):  # an empty cache, then a filled one
        assert tokenizer.encode(text) == reference.encode(text)
    tokenizer._matcher.cache.clear()


def test_decode_of_a_split_character_follows_errors(tokenizer):
    ids = tokenizer.encode("😀")
    assert len(ids) > 1, "the vocabulary splits this emoji across ids"
    head = ids[:1]
    assert tokenizer.decode_bytes(head) == "😀".encode()[: len(tokenizer.decode_bytes(head))]
    assert tokenizer.decode(head) == "\ufffd"
    assert tokenizer.decode(head, errors="ignore") == ""
    with pytest.raises(UnicodeDecodeError):
        tokenizer.decode(head, errors="strict")
    assert tokenizer.decode(ids, errors="strict") == "😀"


def test_end_of_text_decodes_to_nothing(tokenizer):
    assert tokenizer.decode([0, *tokenizer.encode("hi"), 0]) == "hi"


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([65536], "token id 65536 cannot be decoded"),
        ([-1], "token id -1 cannot be decoded"),
        ([1, 65530], "token id 65530 cannot be decoded.*no entry"),
        ([1.0], "integers"),
        (np.zeros((2, 2), np.int32), "flat sequence"),
    ],
)
def test_bad_ids_raise_a_clear_error(tokenizer, ids, message):
    with pytest.raises(ValueError, match=message):
        tokenizer.decode(ids)


def write_vocab(path, entries: list[bytes]) -> None:
    """A vocabulary file in the official format: the 256 single bytes, then ``entries``."""
    tokens = [bytes([b]) for b in range(256)] + entries
    lines = []
    for i, token in enumerate(tokens, start=1):
        try:
            literal = repr(token.decode("utf-8"))
        except UnicodeDecodeError:
            literal = repr(token)
        lines.append(f"{i} {literal} {len(token)}\n")
    path.write_text("".join(lines), encoding="utf-8")


def greedy_reference(vocab: dict[int, bytes], data: bytes) -> list[int]:
    """Longest match by brute force: at each position try every length, longest first."""
    by_bytes = {token: i for i, token in vocab.items()}
    longest = max(map(len, by_bytes))
    ids, start = [], 0
    while start < len(data):
        end = next(e for e in range(min(len(data), start + longest), start, -1) if data[start:e] in by_bytes)
        ids.append(by_bytes[data[start:end]])
        start = end
    return ids


def test_custom_vocabulary_matches_brute_force_longest_match(tmp_path, either_path):
    # Overlapping entries make greedy choices matter: "abc" then "d" (not "ab" "cd"), " a" vs "a b", ...
    entries = [b"ab", b"abc", b"bcd", b"cd", b"abcab", b" a", b"a b", b"\n\n", b" \n", b"\xe4\xb8", b"ba"]
    path = tmp_path / "vocab.txt"
    write_vocab(path, entries)
    tokenizer = WorldTokenizer(path)
    vocab = read_vocab(path)
    ab = {bytes([b]): b + 1 for b in range(256)}
    assert tokenizer.encode("abcd") == [256 + 2, ab[b"d"]]
    rng = np.random.default_rng(4)
    alphabet = np.frombuffer(b"abcd \n\xe4\xb8", np.uint8)
    for length in (1, 3, 10, 100):
        for _ in range(30):
            data = bytes(rng.choice(alphabet, length))
            assert tokenizer.encode_bytes(data) == greedy_reference(vocab, data)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1 'a' 2\n", "has 1 bytes, the line says 2"),
        ("1 __import__('os') 1\n", "expected"),
        ("x 'a' 1\n", "expected"),
        ("0 'a' 1\n", "outside"),
    ],
)
def test_malformed_vocabulary_lines_are_rejected(tmp_path, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(line, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_vocab(path)


def test_vocabulary_without_every_single_byte_is_rejected(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("1 'a' 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks the single bytes"):
        WorldTokenizer(path).encode("a")
    with pytest.raises(FileNotFoundError):
        WorldTokenizer(tmp_path / "absent.txt")
