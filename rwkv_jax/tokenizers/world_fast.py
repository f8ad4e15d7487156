"""Greedy longest match of bytes over a vocabulary, vectorised with numpy (the engine of WorldTokenizer).

Numpy passes over whole arrays, so that no Python code runs per byte or token of a long text:

* :class:`DoubleArrayTrie`: the vocabulary as a byte trie in two int32 arrays. The child of node ``u`` by
  byte ``b`` is the slot ``base[u] + b`` when ``check[base[u] + b] == u``. :func:`longest_matches` walks many
  start positions down the trie at once, one depth per numpy pass over those still inside the trie.
* :func:`greedy_tokens`: the greedy tokens of many segments (pieces of a text, each followed by SENTINEL), one
  token of every segment per round; the few longest segments left finish on the longest matches at all
  their positions.
* :class:`PieceCache`: the token ids of pieces seen before, in an open-addressing hash table of numpy arrays
  keyed by the piece's bytes (exact keys: no hash collision can change an id).
* :func:`greedy_walk`: the same greedy match in plain Python, for short texts.
"""

import dataclasses

import numpy as np

# A symbol that follows every segment: no trie node has it as a child, so every walk stops there.
SENTINEL = 256
# Pieces up to MAX_KEY_BYTES are cached; the key is their bytes and length in KEY_WORDS 64-bit words: the
# length and 7 bytes, then 8 bytes a word (so that the first word alone is the key of most pieces).
KEY_WORDS = 4
MAX_KEY_BYTES = 8 * KEY_WORDS - 1
_LENGTH_SHIFT = np.uint64(56)
# Below this many segments still being walked, a numpy pass costs more than walking them in Python.
FEW_SEGMENTS = 64
# PieceCache.intern takes this many keys at a time.
INTERN_BATCH = 1 << 16
_WORD_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], np.uint64)
_HASH_MULTIPLIERS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93], np.uint64
)


@dataclasses.dataclass(frozen=True)
class DoubleArrayTrie:
    """A byte trie of a vocabulary in double-array form; S slots, slot 0 is the root.

    Attributes:
      base: [S] int32, the children of node u sit at ``base[u] + byte`` (0 for a leaf).
      check: [S] int32, the parent of the node in each slot; -1 for a free slot.
      match_len: [S] int32, bytes of the longest entry that is a prefix of the node's string (0 at the root).
      match_id: [S] int32, the id of that entry.
      pair_node: [257 * 257] int32, the node of the two symbols a, b (SENTINEL included) at a * 257 + b; -1
        where no entry starts with them.
    """

    base: np.ndarray
    check: np.ndarray
    match_len: np.ndarray
    match_id: np.ndarray
    pair_node: np.ndarray

    @classmethod
    def build(cls, vocab: dict[int, bytes]) -> "DoubleArrayTrie":
        """The trie of ``{id: bytes}``; it must hold all 256 single bytes (every byte starts a match)."""
        prefixes = sorted(
            {token[:k] for token in vocab.values() for k in range(len(token) + 1)}, key=_by_depth
        )
        children: dict[bytes, list[int]] = {prefix: [] for prefix in prefixes}
        for prefix in prefixes[1:]:  # sorted, so each node's child bytes come in increasing order
            children[prefix[:-1]].append(prefix[-1])
        slot_of = {b"": 0}
        used = bytearray(2 * len(prefixes) + 4 * SENTINEL)  # 1 for the slots taken
        used[0] = 1
        base = np.zeros(len(used), np.int32)
        check = np.full(len(used), -1, np.int32)
        first_free = branching_from = 1
        for prefix in prefixes:
            kids = children[prefix]
            if not kids:
                continue
            first_free = used.find(0, first_free)
            if len(kids) == 1:  # most nodes: the first free slot
                node_base = used.find(0, max(first_free, kids[0])) - kids[0]
            else:  # searched from where the last one went: the slots below are mostly taken
                node_base = _first_fit(used, kids, max(first_free, branching_from))
                branching_from = node_base + kids[0]
            if node_base + 2 * SENTINEL > len(used):
                raise AssertionError("double-array trie: slot arrays sized too small")
            base[slot_of[prefix]] = node_base
            for kid in kids:
                used[node_base + kid] = 1
                check[node_base + kid] = slot_of[prefix]
                slot_of[prefix + bytes([kid])] = node_base + kid
        size = max(slot_of.values()) + SENTINEL + 1  # base + SENTINEL stays inside the arrays
        match_len = np.zeros(size, np.int32)
        match_id = np.zeros(size, np.int32)
        bytes_to_id = {token: token_id for token_id, token in vocab.items()}
        for prefix in prefixes[1:]:  # parents first: a node inherits its parent's match unless it is an entry
            slot, parent = slot_of[prefix], slot_of[prefix[:-1]]
            if prefix in bytes_to_id:
                match_len[slot], match_id[slot] = len(prefix), bytes_to_id[prefix]
            else:
                match_len[slot], match_id[slot] = match_len[parent], match_id[parent]
        pair_node = np.full(257 * 257, -1, np.int32)
        for prefix in prefixes:
            if len(prefix) == 2:
                pair_node[prefix[0] * 257 + prefix[1]] = slot_of[prefix]
        return cls(base[:size], check[:size], match_len, match_id, pair_node)


def _by_depth(prefix: bytes) -> tuple[int, bytes]:
    return len(prefix), prefix


def _first_fit(used: bytearray, kids: list[int], start: int) -> int:
    """The lowest base >= start - kids[0], >= 0, where every slot ``base + kid`` is free (``used`` 0)."""
    taken = np.frombuffer(used, np.uint8)
    offsets = np.array(kids[1:]) - kids[0]
    low, window = max(start, kids[0]), 64  # candidate slots for the first kid: low, low + 1, ...
    while low + offsets[-1] < len(used):
        candidates = np.arange(low, min(low + window, len(used) - offsets[-1]))
        fits = taken[candidates] == 0
        for offset in offsets:
            fits &= taken[candidates + offset] == 0
        if fits.any():
            return low + int(np.argmax(fits)) - kids[0]
        low, window = low + window, 2 * window
    raise AssertionError("double-array trie: slot arrays sized too small")


def longest_matches(trie: DoubleArrayTrie, symbols: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The trie node where the walk from each start ends: its ``match_len`` / ``match_id`` are the match.

    Args:
      symbols: [N] int32 byte values, every segment followed by SENTINEL.
      starts: [M] int positions of bytes (not SENTINEL) in ``symbols``.
    Returns:
      [M] int32 slots of the deepest trie node that each start's bytes reach.
    """
    first, second = symbols[starts], symbols[np.asarray(starts) + 1]
    pair = trie.pair_node[first * 257 + second]  # depths 1 and 2 in one lookup
    final = np.where(pair >= 0, pair, trie.base[0] + first)  # every byte is a child of the root
    lanes = np.flatnonzero(pair >= 0)
    positions, nodes = np.asarray(starts)[lanes], pair[lanes]
    depth = 2
    while len(lanes):
        children = trie.base[nodes] + symbols[positions + depth]
        inside = trie.check[children] == nodes
        lanes, positions, nodes = lanes[inside], positions[inside], children[inside]
        final[lanes] = nodes
        depth += 1
    return final


def greedy_walk(trie: DoubleArrayTrie, data: bytes) -> list[int]:
    """The ids of ``data``, the trie walked in Python byte by byte: for short texts, where the fixed cost of
    numpy calls (tens of microseconds) would exceed the walk."""
    _, nodes = _walk(trie, data, 0, len(data))
    match_id = memoryview(trie.match_id)
    return [match_id[node] for node in nodes]


def _walk(trie: DoubleArrayTrie, data, start: int, end: int) -> tuple[list[int], list[int]]:
    """(token starts, their trie nodes) of ``data[start:end]`` (bytes or int array), walked in Python."""
    base, check, match_len = map(memoryview, (trie.base, trie.check, trie.match_len))
    root, starts, nodes = base[0], [], []
    while start < end:
        node, position = root + data[start], start + 1
        while position < end and check[base[node] + data[position]] == node:
            node, position = base[node] + data[position], position + 1
        starts.append(start)
        nodes.append(node)
        start += match_len[node]
    return starts, nodes


def greedy_tokens(
    trie: DoubleArrayTrie, symbols: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The greedy tokens of the segments ``symbols[start:end]`` (each followed by SENTINEL).

    One token of every segment per round: the longest match at each segment's current position. The last
    FEW_SEGMENTS segments (the ones with the most tokens) are walked in Python: a round for a handful of
    segments costs more than that, and walking every position of them in numpy costs up to the longest
    entry (64 spaces) a byte.

    Returns:
      ([T] int64 token start positions, increasing; [T] int32 their trie nodes, as from longest_matches).
    """
    node_at = np.zeros(len(symbols), np.int32)
    on_path = np.zeros(len(symbols), bool)
    current, ends = np.asarray(starts), np.asarray(ends)
    while len(current) > FEW_SEGMENTS:
        nodes = longest_matches(trie, symbols, current)
        on_path[current], node_at[current] = True, nodes
        current = current + trie.match_len[nodes]
        going = current < ends
        current, ends = current[going], ends[going]
    symbol_view = memoryview(symbols)
    for start, end in zip(current.tolist(), ends.tolist(), strict=True):
        positions, nodes = _walk(trie, symbol_view, start, end)
        on_path[positions], node_at[positions] = True, nodes
    tokens = np.flatnonzero(on_path)
    return tokens, node_at[tokens]


def concatenate_segments(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple:
    """The segments ``data[start:start + length]`` one after another as int32, each followed by SENTINEL.

    Returns (symbols [sum(lengths) + K], segment starts in symbols [K]).
    """
    segment_starts = np.cumsum(lengths + 1) - (lengths + 1)
    symbols = np.full(int(lengths.sum()) + len(lengths), SENTINEL, np.int32)
    symbols[ranges(segment_starts, lengths)] = data[ranges(starts, lengths)]
    return symbols, segment_starts


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a Python loop."""
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, np.int64) - offsets, lengths) + np.arange(total)


def piece_keys(padded: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[KEY_WORDS, P] uint64 exact keys of pieces of at most MAX_KEY_BYTES bytes: their bytes and length.

    ``padded`` is the text followed by at least MAX_KEY_BYTES + 1 zero bytes.
    """
    words = np.ndarray((len(padded) - 7,), "<u8", padded, strides=(1,))  # the 8 bytes at every offset
    keys = np.zeros((KEY_WORDS, len(starts)), np.uint64)
    keys[0] = words[starts] & _WORD_MASKS[np.minimum(lengths, 7)] | lengths.astype(np.uint64) << _LENGTH_SHIFT
    for k in range(1, KEY_WORDS):  # the later words only for the longer pieces
        longer = np.flatnonzero(lengths > 8 * k - 1)
        in_word = np.minimum(lengths[longer] - (8 * k - 1), 8)
        keys[k, longer] = words[starts[longer] + 8 * k - 1] & _WORD_MASKS[in_word]
    return keys


class PieceCache:
    """Token ids of pieces (at most MAX_KEY_BYTES bytes), in numpy arrays, looked up many at a time.

    Entries live in growing arrays: key, and offset and count of the entry's ids in ``pool``. An
    open-addressing table of 2^b slots (linear probing, at most half full) maps a key's hash to its entry.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.size = 0
        self.keys = np.zeros((KEY_WORDS, 1024), np.uint64)
        self.offsets = np.zeros(1024, np.int64)
        self.counts = np.zeros(1024, np.int64)
        self.pool = np.zeros(4096, np.int32)
        self.pool_size = 0
        self.slots = np.full(2048, -1, np.int32)

    def intern(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(entry of each [KEY_WORDS, P] key, [P] bool: the key made a new entry, one per distinct new key).

        New entries have no ids yet: give them with :meth:`store` before the next lookup.
        """
        # In batches, so that the table grows with the distinct keys (few in text) rather than with all.
        batches = [
            self._intern_batch(keys[:, i : i + INTERN_BATCH]) for i in range(0, keys.shape[1], INTERN_BATCH)
        ]
        entries = np.concatenate([np.zeros(0, np.int64), *(batch[0] for batch in batches)])
        return entries, np.concatenate([np.zeros(0, bool), *(batch[1] for batch in batches)])

    def _intern_batch(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        most = self.size + keys.shape[1]
        self._reserve(most, self.pool_size)
        if 2 * most > len(self.slots):
            self._rehash(1 << (4 * most - 1).bit_length())  # then at most a quarter full
        mask = len(self.slots) - 1
        slot = self._home(keys)
        entries = np.full(keys.shape[1], -1, np.int64)
        new = np.zeros(keys.shape[1], bool)
        pending = np.arange(keys.shape[1])
        while len(pending):
            occupant = self.slots[slot[pending]]
            taken = occupant >= 0
            compared, occupant = pending[taken], occupant[taken]
            same = _equal_columns(self.keys, occupant, keys, compared)
            entries[compared[same]] = occupant[same]
            moving = compared[~same]  # another key sits there: probe the next slot
            slot[moving] = (slot[moving] + 1) & mask
            # Keys that reach the same free slot: whichever write lands wins it, the others look again.
            claimants = pending[~taken]
            self.slots[slot[claimants]] = -2 - claimants
            won = self.slots[slot[claimants]] == -2 - claimants
            winners = claimants[won]
            created = np.arange(self.size, self.size + len(winners))
            self.slots[slot[winners]] = created
            self.keys[:, created] = keys[:, winners]
            self.size += len(winners)
            entries[winners], new[winners] = created, True
            pending = np.concatenate([moving, claimants[~won]])
        return entries, new

    def store(self, entries: np.ndarray, ids: np.ndarray, counts: np.ndarray) -> None:
        """Gives new ``entries`` their ids: ``counts`` of them each, one entry after another in ``ids``."""
        self._reserve(self.size, self.pool_size + len(ids))
        self.counts[entries] = counts
        self.offsets[entries] = self.pool_size + np.cumsum(counts) - counts
        self.pool[self.pool_size : self.pool_size + len(ids)] = ids
        self.pool_size += len(ids)

    def scratch(self, ids: np.ndarray) -> int:
        """Writes ``ids`` after the pool's end, not kept (valid until the next store); their offset."""
        self._reserve(self.size, self.pool_size + len(ids))
        self.pool[self.pool_size : self.pool_size + len(ids)] = ids
        return self.pool_size

    def _rehash(self, n_slots: int) -> None:
        keys, offsets, counts = (
            self.keys[:, : self.size].copy(),
            self.offsets[: self.size],
            self.counts[: self.size],
        )
        self.slots, self.size = np.full(n_slots, -1, np.int32), 0
        entries, _ = self.intern(keys)
        self.offsets[entries], self.counts[entries] = offsets.copy(), counts.copy()

    def _home(self, keys: np.ndarray) -> np.ndarray:
        mixed = (
            sum(keys[k] * _HASH_MULTIPLIERS[k] for k in range(1, KEY_WORDS)) + keys[0] * _HASH_MULTIPLIERS[0]
        )
        mixed ^= mixed >> np.uint64(29)
        shift = np.uint64(64 - (len(self.slots).bit_length() - 1))
        return ((mixed * _HASH_MULTIPLIERS[0]) >> shift).astype(np.int64)

    def _reserve(self, n_entries: int, n_ids: int) -> None:
        if n_entries > self.keys.shape[1]:
            grow = max(n_entries, 2 * self.keys.shape[1])
            self.keys = np.concatenate(
                [self.keys, np.zeros((KEY_WORDS, grow - self.keys.shape[1]), np.uint64)], axis=1
            )
            self.offsets, self.counts = np.resize(self.offsets, grow), np.resize(self.counts, grow)
        if n_ids > len(self.pool):
            self.pool = np.resize(self.pool, max(n_ids, 2 * len(self.pool)))


def _equal_columns(
    table: np.ndarray, columns: np.ndarray, keys: np.ndarray, key_columns: np.ndarray
) -> np.ndarray:
    """``table[:, columns] == keys[:, key_columns]`` in every row, one bool per column."""
    first = keys[0, key_columns]
    equal = table[0, columns] == first
    longer = np.flatnonzero(equal & (first >= np.uint64(8) << _LENGTH_SHIFT))  # pieces of 8 or more bytes
    for row in range(1, len(table)):
        equal[longer] &= table[row, columns[longer]] == keys[row, key_columns[longer]]
    return equal
