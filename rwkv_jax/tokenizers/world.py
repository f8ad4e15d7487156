"""WorldTokenizer: the RWKV "World" tokenizer (Eagle and Finch, arXiv 2404.05892), greedy longest match.

The vocabulary (``data/rwkv_vocab_v20230424.txt``, from BlinkDL's ``rwkv`` package, Apache-2.0, see
``data/NOTICE``) holds 65,529 byte strings for the ids 1..65529; id 0 ends a document and has no bytes, ids
65530..65535 are unused rows of the 65,536-row embedding. Encoding takes the UTF-8 bytes of the text and
repeatedly cuts off the longest vocabulary entry that starts the rest, which is what the reference
``rwkv.rwkv_tokenizer.TRIE_TOKENIZER`` does with a byte trie walked in Python. The result here is the same, id
for id, but found faster:

1. Split points. Call a byte pair (a, b) *joinable* when some vocabulary entry contains a followed by b. Where
   two neighbouring bytes of the text are not joinable, no entry can cover both, so every tokenization cuts
   there, and the greedy tokenization of the text is the concatenation of the greedy tokenizations of the
   pieces between such points (the longest entry starting inside a piece cannot reach past its end). The
   points come from one numpy lookup in a 256 x 256 table; the vocabulary was built from pre-split text (an
   entry never holds a letter followed by a space, for one), so in prose a piece is about a word.
2. Pieces repeat (words do), so each piece's ids are cached.
3. A new piece is matched by Python's ``re`` engine against one pattern: the vocabulary as a trie written as
   nested alternations, ``(?:a(?:b(?:c|)|d)|...)``, where every node tries its children first and the empty
   alternative (the node's own entry) last. ``re`` takes the first alternative that leads to a match, so at
   each node the deeper entry wins: the longest match, as greedy tokenization needs.

Building all this takes one to two seconds, once per process and vocabulary file (cached). Speed against
TRIE_TOKENIZER (``experiments/bench_tokenizer.py``, CPU time, cache empty at the start): about 5x on
multilingual prose, 3x on Python source, 1.6x on random characters from all planes (almost every piece is
new: such texts skip the cache and are one regex pass, where ``re`` needs 200-400 ns a token); 5-7x on text
seen before. Threads may encode at once: the cache is a dict whose values are never changed once stored.
"""

import ast
import functools
import itertools
import pathlib
import re
from collections.abc import Iterable

import numpy as np

from rwkv_jax.tokenizers.base import Tokenizer, as_id_list, bad_id_error, require_str

VOCAB_FILE = pathlib.Path(__file__).resolve().parent / "data" / "rwkv_vocab_v20230424.txt"
VOCAB_SIZE = 65536
EOS_ID = 0
# Pieces up to this many bytes are cached; longer ones rarely repeat.
MAX_CACHED_PIECE_BYTES = 64
# The cache is emptied when it reaches this many pieces (bounds memory in long-running processes).
MAX_CACHED_PIECES = 1 << 18
# Texts whose pieces are shorter than this on average skip the cache (see _Matcher.encode).
MIN_MEAN_PIECE_BYTES = 3
# A trie node with more children than this splits them into groups behind a lookahead (see _trie_pattern).
CHILDREN_PER_GROUP = 32


def read_vocab(path: str | pathlib.Path = VOCAB_FILE) -> dict[int, bytes]:
    """Reads an RWKV vocabulary file: lines ``<id> <python str or bytes literal> <byte length>``.

    Literals are parsed with ``ast.literal_eval`` (never ``eval``). Raises ValueError naming the line for a
    malformed line, a length that does not match, an id outside [1, VOCAB_SIZE) or a repeated id or entry.
    """
    vocab: dict[int, bytes] = {}
    seen: set[bytes] = set()
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            token_id, token = _parse_vocab_line(line.rstrip("\n"), f"{path}:{line_no}")
            if not 0 < token_id < VOCAB_SIZE or token_id in vocab or token in seen:
                raise ValueError(f"{path}:{line_no}: id {token_id} outside [1, {VOCAB_SIZE}) or repeated")
            vocab[token_id] = token
            seen.add(token)
    return vocab


def _parse_vocab_line(line: str, where: str) -> tuple[int, bytes]:
    try:
        first, last = line.index(" "), line.rindex(" ")
        token_id, literal, length = int(line[:first]), line[first + 1 : last], int(line[last + 1 :])
        token = _parse_literal(literal)
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"{where}: expected '<id> <str or bytes literal> <length>', got {line!r}") from e
    if len(token) != length or length == 0:
        raise ValueError(f"{where}: entry {token!r} has {len(token)} bytes, the line says {length}")
    return token_id, token


def _parse_literal(literal: str) -> bytes:
    """The bytes of a ``repr`` of a str (as UTF-8) or of a bytes object."""
    # Fast path (most lines): a quoted str without escapes is its own content.
    if len(literal) >= 2 and literal[0] == literal[-1] and literal[0] in "'\"" and "\\" not in literal:
        return literal[1:-1].encode("utf-8")
    value = ast.literal_eval(literal)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise ValueError(f"expected a str or bytes literal, got {literal!r}")


class _Matcher:
    """What encoding and decoding need, built once from a vocabulary ``{id: bytes}``."""

    def __init__(self, vocab: dict[int, bytes]):
        # id -> bytes; None for the unused ids.
        self.id_to_bytes: list[bytes | None] = [vocab.get(i) for i in range(VOCAB_SIZE)]
        self.id_to_bytes[EOS_ID] = b""
        self.bytes_to_id = {token: token_id for token_id, token in vocab.items()}
        missing = [bytes([b]) for b in range(256) if bytes([b]) not in self.bytes_to_id]
        if missing:
            raise ValueError(
                f"the vocabulary lacks the single bytes {missing[:8]}: not every text can be encoded"
            )
        joinable = {(a << 8) | b for token in vocab.values() for a, b in itertools.pairwise(token)}
        # [256 * 256] bool, index (a << 8) | b: True where a piece must end between the bytes a and b.
        self.splits = np.ones(256 * 256, bool)
        self.splits[list(joinable)] = False
        self.pattern = re.compile(_trie_pattern(_trie(vocab.values()))[0])
        self.cache: dict[bytes, list[int]] = {}

    def encode(self, data: bytes) -> list[int]:
        bounds = _piece_bounds(data, self.splits)
        if len(bounds) - 1 > len(data) / MIN_MEAN_PIECE_BYTES:
            # Pieces this short are about one token each (random characters, byte soup): caching them costs
            # more than it saves, one regex pass over everything is about twice as fast.
            return self.tokenize_piece(data)
        ids: list[int] = []
        extend, cache, tokenize = ids.extend, self.cache, self.tokenize_piece
        for start, end in itertools.pairwise(bounds):
            piece = data[start:end]
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = tokenize(piece)
                if end - start <= MAX_CACHED_PIECE_BYTES:
                    if len(cache) >= MAX_CACHED_PIECES:
                        cache.clear()
                    cache[piece] = piece_ids
            extend(piece_ids)
        return ids

    def tokenize_piece(self, piece: bytes) -> list[int]:
        token_id = self.bytes_to_id.get(piece)
        if token_id is not None:  # a whole piece is often one entry (a word): no need to match
            return [token_id]
        return list(map(self.bytes_to_id.__getitem__, self.pattern.findall(piece)))


def _piece_bounds(data: bytes, splits: np.ndarray) -> list[int]:
    """Piece starts and then ``len(data)``: a piece ends between every pair of bytes marked in ``splits``."""
    if len(data) < 2:
        return [0, len(data)] if data else [0]
    arr = np.frombuffer(data, np.uint8)
    pair = (arr[:-1].astype(np.intp) << 8) | arr[1:]
    return [0, *(np.flatnonzero(splits[pair]) + 1).tolist(), len(data)]


def _trie(tokens: Iterable[bytes]) -> dict:
    """A byte trie of nested dicts {byte: child}; the key None marks a node that is itself an entry."""
    root: dict = {}
    for token in tokens:
        node = root
        for byte in token:
            node = node.setdefault(byte, {})
        node[None] = True
    return root


def _trie_pattern(node: dict) -> tuple[bytes, int]:
    """(regex source matching the longest entry below ``node``, number of entries below it).

    A branch over the children, each child's byte followed by its own pattern, with the empty alternative
    last when the node is itself an entry. Only one child can match the next byte, so their order changes
    speed, not the result. ``re`` tries the alternatives of a branch one by one, so the most populous go
    first, and a node with many children puts them in groups of ``CHILDREN_PER_GROUP``, each behind a
    lookahead for its bytes: one failed lookahead skips a whole group (about 1.5x faster on prose, 2x on
    random characters, than one flat branch).
    """
    edges = [(byte, child) for byte, child in node.items() if byte is not None]
    children = sorted(((b, *_trie_pattern(child)) for b, child in edges), key=lambda c: -c[2])
    count = (None in node) + sum(c[2] for c in children)
    alternatives = [re.escape(bytes([b])) + pattern for b, pattern, _ in children]
    if len(children) > CHILDREN_PER_GROUP:
        alternatives = [
            b"(?=[" + re.escape(bytes(sorted(b for b, _, _ in children[i : i + CHILDREN_PER_GROUP]))) + b"])"
            + b"(?:" + b"|".join(alternatives[i : i + CHILDREN_PER_GROUP]) + b")"
            for i in range(0, len(children), CHILDREN_PER_GROUP)
        ]  # fmt: skip
    if None in node and alternatives:
        alternatives.append(b"")
    if len(alternatives) <= 1:
        return (alternatives[0] if alternatives else b""), count
    return b"(?:" + b"|".join(alternatives) + b")", count


@functools.cache
def _load_matcher(path: str) -> _Matcher:
    return _Matcher(read_vocab(path))


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
