"""Tokenizer file readers under attack: the World vocabulary (world.py) and tokenizer.json (hf.py).

Short run (default suite):  python -m pytest -q tests/fuzz
Long run (docs/reliability.md):  RWKV_JAX_FUZZ_EXAMPLES=2000 python -m pytest -q tests/fuzz

A vocabulary must load into a tokenizer that round-trips bytes, or raise VocabFormatError naming the file;
a tokenizer.json must load or raise TokenizerFileError naming the file; within the bounds of
tests/fuzz/harness.py, and a literal that would run code (``__import__('os')...``) never does.
"""

import json
import pathlib
import time

import pytest
import tokenizers
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

from rwkv_jax.host_memory import process_status_kib
from rwkv_jax.tokenizers import world
from rwkv_jax.tokenizers.hf import HFTokenizer, TokenizerFileError
from rwkv_jax.tokenizers.world import VocabFormatError
from tests.fuzz import harness
from tests.fuzz.harness import FUZZ

# Building the trie keeps every prefix of every entry (entries <= 256 bytes): ~50x the file at most.
VOCAB_MEMORY_FACTOR = 64


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory) -> pathlib.Path:
    """Lines of the shipped World vocabulary: all 256 single bytes, then every 61st line (~1,300 entries).

    A subset, so that an example builds its tokenizer in milliseconds, not the 2-3 s of the full one.
    """
    lines = world.VOCAB_FILE.read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("".join(lines[:256] + lines[256::61]), encoding="utf-8")
    return path


def load_world(path: pathlib.Path) -> world._Matcher:
    """What WorldTokenizer does on first use: read the file and build the matcher."""
    return world._Matcher(world.read_vocab(path), str(path))


def check_world(path: pathlib.Path, sentinel: pathlib.Path | None = None) -> object:
    outcome = harness.check_reader(load_world, path, VocabFormatError, memory_factor=VOCAB_MEMORY_FACTOR)
    if isinstance(outcome, world._Matcher):  # loaded: it must tokenize any bytes and give them back
        data = bytes(range(256)) + "naïve 中文 text".encode()
        assert b"".join(outcome.id_to_bytes[i] for i in outcome.encode(data)) == data
    if sentinel is not None:
        assert not sentinel.exists(), "a literal in the vocabulary ran code"
    return outcome


HOSTILE_LITERALS = [
    "'a' * 10**9",
    "__import__('os').system('touch {sentinel}')",
    "(" * 500 + "'a'" + ")" * 500,
    "-" * 900 + "1",
    "[" * 300 + "]" * 300,
    "b'" + "\\xff" * 300 + "'",
    "'" + "x" * 5000 + "'",
    "'\\ud800'",
    "''",
    "1e999999",
    "f'{1}'",
]


@st.composite
def line_edits(draw, lines: list[str], sentinel: pathlib.Path) -> str:
    """The vocabulary with up to three lines replaced by hostile ones, deleted or repeated."""
    lines = list(lines)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        fields = lines[i].rstrip("\n").split(" ")
        token_id, length = fields[0], fields[-1]
        kind = draw(st.sampled_from(["literal", "id", "length", "delete", "repeat"]))
        if kind == "literal":
            literal = draw(st.sampled_from(HOSTILE_LITERALS)).replace("{sentinel}", str(sentinel))
            lines[i] = f"{token_id} {literal} {draw(st.sampled_from([length, '1', '300', '1000000000']))}\n"
        elif kind == "id":
            lines[i] = f"{draw(st.sampled_from(['0', '-1', '65536', '99999999999999999999', '1']))} 'q' 1\n"
        elif kind == "length":
            lines[i] = lines[i].rsplit(" ", 1)[0] + f" {draw(st.sampled_from(['0', '-1', '2', 'x', '']))}\n"
        elif kind == "delete":
            del lines[i]
        else:
            lines.append(lines[i])
    return "".join(lines)


@FUZZ
@given(data=st.data())
def test_mutated_world_vocabulary_loads_or_raises_vocab_format_error(tmp_path, small_vocab, data):
    original = small_vocab.read_bytes()
    edit_list = data.draw(harness.edits(len(original)), label="edits")
    path = tmp_path / f"vocab-{time.perf_counter_ns()}.txt"
    path.write_bytes(harness.mutate(original, edit_list))
    check_world(path)


@FUZZ
@given(data=st.data())
def test_edited_world_vocabulary_lines_load_or_raise_and_never_run_code(tmp_path, small_vocab, data):
    sentinel = tmp_path / f"literal-ran-{time.perf_counter_ns()}"
    lines = small_vocab.read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path / f"vocab-{time.perf_counter_ns()}.txt"
    path.write_text(data.draw(line_edits(lines, sentinel), label="vocabulary"), encoding="utf-8")
    check_world(path, sentinel)


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory) -> pathlib.Path:
    """A small byte-level BPE tokenizer.json (GPT-NeoX style), trained here on a few sentences."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(["The quick brown fox jumps over the lazy dog. 中文 😀"] * 20, trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def reset_peak_rss() -> int:
    """Resets this process's peak resident memory (``VmHWM``) to its current one; returns that, in bytes
    (where the reset is refused, the peak as it stands).

    Without the reset the peak of everything the test process ran before (a pytest worker's models: GBs)
    would hide a tokenizer's allocation below it; ``ru_maxrss`` cannot be reset and also carries the
    parent's peak over ``exec``.
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # Linux: reset the peak RSS to the current RSS
    except OSError:  # a kernel or container that refuses it: only growth above the earlier peak is seen
        return process_status_kib("VmHWM") * 1024
    return process_status_kib("VmRSS") * 1024


def check_hf(path: pathlib.Path) -> object:
    """The fuzz property for HFTokenizer; Rust allocations escape tracemalloc, so the peak RSS is checked:
    it may rise at most 256 MiB above the resident memory before the load (measured over the suite's
    examples: at most 0.13 MiB; the bound is for a hostile file's allocation, not a tolerance)."""
    before = reset_peak_rss()
    outcome = harness.check_reader(HFTokenizer, path, TokenizerFileError, memory_factor=64)
    grown = process_status_kib("VmHWM") * 1024 - before
    assert grown < 256 << 20, "loading the tokenizer.json took 256 MiB or more"
    if isinstance(outcome, HFTokenizer):
        outcome.decode(outcome.encode("The quick brown fox 中文"))
    return outcome


JSON_VALUES = st.sampled_from([None, -1, 0, 2**31, 2**64, 1e308, "", "x" * 10_000, [], {}, [[[[[]]]]], True])


def json_paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys and indices) into a JSON value, the first 50 items of lists only."""
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:50]):
            paths += json_paths(item, (*prefix, i))
    return paths


@st.composite
def json_edits(draw, document: dict) -> str:
    """tokenizer.json with 1-3 values replaced, keys deleted, or a value nested 10,000 deep."""
    document = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(json_paths(document)[1:]))
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        kind = draw(st.sampled_from(["replace", "replace", "delete", "deep"]))
        if kind == "delete":
            del parent[path[-1]]
        elif kind == "deep":
            parent[path[-1]] = "[" * 10_000 + "]" * 10_000  # replaced in the text below
        else:
            parent[path[-1]] = draw(JSON_VALUES)
        document = json.loads(json.dumps(document))
    return json.dumps(document).replace('"' + "[" * 10_000 + "]" * 10_000 + '"', "[" * 10_000 + "]" * 10_000)


@FUZZ
@given(data=st.data())
def test_edited_tokenizer_json_loads_or_raises_tokenizer_file_error(tmp_path, tokenizer_json, data):
    document = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    path = tmp_path / f"tokenizer-{time.perf_counter_ns()}.json"
    path.write_text(data.draw(json_edits(document), label="tokenizer.json"), encoding="utf-8")
    check_hf(path)


@FUZZ
@given(data=st.data())
def test_mutated_tokenizer_json_bytes_load_or_raise_tokenizer_file_error(tmp_path, tokenizer_json, data):
    original = tokenizer_json.read_bytes()
    path = tmp_path / f"tokenizer-{time.perf_counter_ns()}.json"
    path.write_bytes(harness.mutate(original, data.draw(harness.edits(len(original)), label="edits")))
    check_hf(path)


def test_unmutated_inputs_load(small_vocab, tokenizer_json):
    """The fuzzers' starting points load: a fuzz test whose every input fails would test nothing."""
    assert isinstance(check_world(small_vocab), world._Matcher)
    assert isinstance(check_hf(tokenizer_json), HFTokenizer)
