"""WorldTokenizer: the RWKV "World" tokenizer (Eagle and Finch, arXiv 2404.05892), greedy longest match.

The vocabulary (``data/rwkv_vocab_v20230424.txt``, from BlinkDL's ``rwkv`` package, Apache-2.0, see
``data/NOTICE``) holds 65,529 byte strings for the ids 1..65529; id 0 ends a document and has no bytes, ids
65530..65535 are unused rows of the 65,536-row embedding. Encoding takes the UTF-8 bytes of the text and
repeatedly cuts off the longest vocabulary entry that starts the rest, which is what the reference
``rwkv.rwkv_tokenizer.TRIE_TOKENIZER`` does with a byte trie walked in Python. The result here is the same, id
for id, but found with a few dozen numpy passes over whole arrays instead of Python code per byte:

1. Pieces. Call a byte pair (a, b) *joinable* when some vocabulary entry contains a followed by b. Where two
   neighbouring bytes of the text are not joinable, no entry can cover both, so every tokenization cuts
   there, and the greedy tokenization of the text is the concatenation of the greedy tokenizations of the
   pieces between such points (the longest entry starting inside a piece cannot reach past its end). The
   points come from one numpy lookup in a 256 x 256 table; the vocabulary was built from pre-split text (an
   entry never holds a letter followed by a space, for one), so in prose a piece is about a word.
2. Pieces repeat (words do): the ids of every piece of up to 31 bytes are kept in a cache, a numpy hash table
   keyed by the piece's exact bytes (``world_fast.PieceCache``), looked up for all pieces at once.
3. New pieces, and the longer ones, are matched together, walking down the vocabulary's trie (a double-array
   trie, ``world_fast.DoubleArrayTrie``) one byte per numpy pass for all of them at once: each round finds the
   longest entry at every piece's current position, which is the piece's next token.

Texts under SHORT_TEXT_BYTES walk the same trie in Python instead (1.5-2x TRIE_TOKENIZER), since numpy's
fixed cost per call is about 0.2 ms. Building takes 2-3 seconds, once per process and vocabulary file.
Speed against TRIE_TOKENIZER (``experiments/bench_tokenizer.py``, 3 MB, CPU time, same run, cache empty at
the start): 6-8x on the whole mix, 8-10x on prose and docstrings, 7x on Python source, 5x on made-up
multilingual words (many distinct pieces), 4x on random characters of every plane (almost no repetition);
7-12x with the cache filled. A text that is one long piece (a run of one character, say) is walked in Python,
at about the reference's speed. Threads may encode at once (a lock guards the cache).
"""

import ast
import functools
import itertools
import pathlib
import threading
from collections.abc import Iterable

import numpy as np

from rwkv_jax.tokenizers import world_fast
from rwkv_jax.tokenizers.base import Tokenizer, as_id_list, bad_id_error, require_str

VOCAB_FILE = pathlib.Path(__file__).resolve().parent / "data" / "rwkv_vocab_v20230424.txt"
VOCAB_SIZE = 65536
EOS_ID = 0
# Texts shorter than this are walked in Python: numpy's fixed cost per call (~0.2 ms) would be more.
SHORT_TEXT_BYTES = 4096
# The piece cache is emptied when it holds more pieces than this (bounds memory in long-running processes).
MAX_CACHED_PIECES = 1 << 18
# Longest vocabulary entry accepted (the shipped vocabulary's longest is 128 bytes). Building the trie keeps
# every prefix of every entry, so an entry of L bytes costs about L**2 / 2 bytes: the cap bounds that.
MAX_ENTRY_BYTES = 256
# A literal longer than this cannot hold MAX_ENTRY_BYTES bytes (4 characters a byte, as in '\\xff', quotes and
# a b prefix): refused before ast.literal_eval sees it.
_MAX_LITERAL_CHARS = 4 * MAX_ENTRY_BYTES + 3


class VocabFormatError(ValueError):
    """An RWKV vocabulary file that is malformed or cannot tokenize every text; the message names the file."""


def read_vocab(path: str | pathlib.Path = VOCAB_FILE) -> dict[int, bytes]:
    """Reads an RWKV vocabulary file: lines ``<id> <python str or bytes literal> <byte length>``, UTF-8.

    Literals are parsed with ``ast.literal_eval`` (never ``eval``), at most _MAX_LITERAL_CHARS long. Raises
    VocabFormatError naming the file and line for text that is not UTF-8, a malformed line, an entry of 0 or
    more than MAX_ENTRY_BYTES bytes, a length that does not match, an id outside [1, VOCAB_SIZE) or a
    repeated id or entry.
    """
    vocab: dict[int, bytes] = {}
    seen: set[bytes] = set()
    line_no = 0
    with open(path, encoding="utf-8") as f:
        try:
            for line_no, line in enumerate(f, start=1):
                token_id, token = _parse_vocab_line(line.rstrip("\n"), f"{path}:{line_no}")
                if not 0 < token_id < VOCAB_SIZE or token_id in vocab or token in seen:
                    raise VocabFormatError(
                        f"{path}:{line_no}: id {token_id} outside [1, {VOCAB_SIZE}) or repeated"
                    )
                vocab[token_id] = token
                seen.add(token)
        except UnicodeDecodeError as e:
            raise VocabFormatError(f"{path}: not UTF-8 text after line {line_no} ({e.reason})") from None
    return vocab


def _parse_vocab_line(line: str, where: str) -> tuple[int, bytes]:
    try:
        first, last = line.index(" "), line.rindex(" ")
        token_id, literal, length = int(line[:first]), line[first + 1 : last], int(line[last + 1 :])
        token = _parse_literal(literal)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        # MemoryError, RecursionError: what the parser raises for deeply nested expressions.
        raise VocabFormatError(
            f"{where}: expected '<id> <str or bytes literal> <length>', got {_clip(line)!r}"
        ) from e
    if len(token) != length or not 0 < length <= MAX_ENTRY_BYTES:
        raise VocabFormatError(
            f"{where}: entry {_clip(repr(token))} has {len(token)} bytes, the line says {length}; expected "
            f"a length in [1, {MAX_ENTRY_BYTES}]"
        )
    return token_id, token


def _clip(text: str) -> str:
    """``text`` cut to at most about 120 characters, for error messages."""
    return text if len(text) <= 120 else f"{text[:80]}...{text[-30:]}"


def _parse_literal(literal: str) -> bytes:
    """The bytes of a ``repr`` of a str (as UTF-8) or of a bytes object."""
    # Fast path (most lines): a quoted str without escapes is its own content.
    if len(literal) >= 2 and literal[0] == literal[-1] and literal[0] in "'\"" and "\\" not in literal:
        return literal[1:-1].encode("utf-8")
    if len(literal) > _MAX_LITERAL_CHARS:
        raise ValueError(f"a literal of {len(literal)} characters, more than an entry can need")
    value = ast.literal_eval(literal)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise ValueError(f"expected a str or bytes literal, got {literal!r}")


class _Matcher:
    """What encoding and decoding need, built once from a vocabulary ``{id: bytes}`` read from ``path``."""

    def __init__(self, vocab: dict[int, bytes], path: str = "<vocabulary>"):
        # id -> bytes; None for the unused ids.
        self.id_to_bytes: list[bytes | None] = [vocab.get(i) for i in range(VOCAB_SIZE)]
        self.id_to_bytes[EOS_ID] = b""
        missing = sorted(set(range(256)) - {token[0] for token in vocab.values() if len(token) == 1})
        if missing:
            raise VocabFormatError(
                f"{path}: the vocabulary lacks the single bytes {[bytes([b]) for b in missing[:8]]}: "
                "not every text can be encoded"
            )
        joinable = {(a << 8) | b for token in vocab.values() for a, b in itertools.pairwise(token)}
        # [256 * 256] bool, index (a << 8) | b: True where a piece must end between the bytes a and b.
        self.splits = np.ones(256 * 256, bool)
        self.splits[list(joinable)] = False
        self.trie = world_fast.DoubleArrayTrie.build(vocab)
        self.cache = world_fast.PieceCache()
        self.lock = threading.Lock()

    def encode(self, data: bytes) -> list[int]:
        if len(data) < SHORT_TEXT_BYTES:
            return world_fast.greedy_walk(self.trie, data)
        text = np.frombuffer(data, np.uint8)
        pairs = np.ndarray((len(data) - 1,), ">u2", data, strides=(1,))  # (a << 8) | b of neighbours a, b
        starts = np.flatnonzero(np.concatenate([[True], self.splits[pairs]]))
        lengths = np.diff(starts, append=len(data))
        short = lengths <= world_fast.MAX_KEY_BYTES
        keys = world_fast.piece_keys(
            data + bytes(world_fast.MAX_KEY_BYTES + 1), starts[short], lengths[short]
        )
        with self.lock:  # the cache's arrays change below
            if self.cache.size > MAX_CACHED_PIECES:
                self.cache.clear()
            entries, new = self.cache.intern(keys)
            # New pieces (stored in the cache) and long ones (never cached) are matched together.
            new_pieces = np.flatnonzero(short)[new]
            ids, counts = self._match_segments(
                text, np.concatenate([starts[new_pieces], starts[~short]]),
                np.concatenate([lengths[new_pieces], lengths[~short]]),
            )  # fmt: skip
            new_counts, long_counts = counts[: len(new_pieces)], counts[len(new_pieces) :]
            self.cache.store(entries[new], ids[: new_counts.sum()], new_counts)
            # Every piece's ids are a run of the cache's pool: long pieces' in scratch space after its end.
            offsets, piece_counts = np.empty(len(starts), np.int64), np.empty(len(starts), np.int64)
            offsets[short], piece_counts[short] = self.cache.offsets[entries], self.cache.counts[entries]
            long_ids = ids[new_counts.sum() :]
            offsets[~short] = self.cache.scratch(long_ids) + np.cumsum(long_counts) - long_counts
            piece_counts[~short] = long_counts
            return self.cache.pool[world_fast.ranges(offsets, piece_counts)].tolist()

    def _match_segments(self, text: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple:
        """(ids of all segments ``text[start:start + length]`` one after another, [K] ids per segment)."""
        symbols, segment_starts = world_fast.concatenate_segments(text, starts, lengths)
        tokens, nodes = world_fast.greedy_tokens(self.trie, symbols, segment_starts, segment_starts + lengths)
        counts = np.diff(np.searchsorted(tokens, np.append(segment_starts, len(symbols))))
        return self.trie.match_id[nodes], counts


@functools.cache
def _load_matcher(path: str) -> _Matcher:
    return _Matcher(read_vocab(path), path)


class WorldTokenizer(Tokenizer):
    """The RWKV World tokenizer (vocabulary rwkv_vocab_v20230424, 65,536 ids; id 0 ends a document).

    Args:
      vocab_file: a vocabulary in the same format; the bundled one by default. Read on first use, once per
        process and file.
    """

    vocab_size = VOCAB_SIZE
    eos_id = EOS_ID

    def __init__(self, vocab_file: str | pathlib.Path = VOCAB_FILE):
        self.vocab_file = str(vocab_file)
        if not pathlib.Path(self.vocab_file).is_file():
            raise FileNotFoundError(f"no RWKV vocabulary file at {self.vocab_file}")

    @property
    def _matcher(self) -> _Matcher:
        return _load_matcher(self.vocab_file)

    def encode(self, text: str) -> list[int]:
        """The ids of the UTF-8 bytes of ``text`` (a lone surrogate raises UnicodeEncodeError)."""
        return self.encode_bytes(require_str(text).encode("utf-8"))

    def encode_bytes(self, data: bytes) -> list[int]:
        """The ids of any byte string (invalid UTF-8 included: every byte value is an entry)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"encode_bytes expects bytes, got {type(data).__name__}")
        return self._matcher.encode(bytes(data))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of ``ids``; id 0 (end of document) has none; ValueError for an id without an entry."""
        ids = as_id_list(ids, self.vocab_size)
        table = self._matcher.id_to_bytes
        try:
            return b"".join([table[token_id] for token_id in ids])
        except TypeError:
            bad = next(token_id for token_id in ids if table[token_id] is None)
            raise bad_id_error(bad, self.vocab_size, "; this id has no entry in the vocabulary") from None
