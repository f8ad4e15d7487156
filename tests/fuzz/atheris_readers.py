"""Coverage-guided fuzzing (atheris, i.e. libFuzzer) of the file readers, with the hypothesis tests' property.

    python -m tests.fuzz.atheris_readers pth -runs=100000          # the long run: docs/reliability.md
    python -m tests.fuzz.atheris_readers binidx -max_total_time=300
    python -m tests.fuzz.atheris_readers all -runs=200             # every target in one run (the suite's)

Targets: ``pth`` (read_pth, memory-mapped and not, in turn), ``safetensors``, ``binidx`` (the ``.idx`` of a
dataset; its ``.bin`` stays as written) and ``world`` (a World vocabulary). tokenizer.json is parsed by the
Rust ``tokenizers`` library, which atheris cannot instrument: the hypothesis tests alone attack it.

Each target starts from seed files written here by the library's own writers, in a temporary corpus folder
that libFuzzer grows with the inputs that reach new code in ``rwkv_jax`` (the only package instrumented).
Every input goes through the check of the hypothesis tests (``check_*`` in tests/fuzz/test_*_fuzz.py): it
loads, or raises the reader's own error naming the file, within bounded time and memory. A violation is an
uncaught exception: libFuzzer stops, prints it, writes the input to ``crash-<sha1>`` in the working folder
and exits non-zero. Arguments after the target are libFuzzer's (``-runs``, ``-max_total_time``,
``-max_len``, ``-seed``, a corpus folder to keep ...). ``-timeout`` is set to 0: the check's own alarm
(harness.HARD_SECONDS) is the time bound, and libFuzzer's would replace its signal handler. ``-rss_limit_mb``
is, unless given, 2048 MB above the peak the process starts with (:func:`rss_limit_mb`).
"""

import itertools
import pathlib
import resource
import sys
import tempfile
from collections.abc import Callable

import atheris
import numpy as np

with atheris.instrument_imports(include=["rwkv_jax"]):
    from rwkv_jax.checkpoint.pth_write import write_pth
    from rwkv_jax.checkpoint.safetensors_io import write_safetensors
    from rwkv_jax.tokenizers import world
    from rwkv_jax.training.binidx import write_binidx
    from tests.fuzz import test_binidx_fuzz, test_pth_fuzz, test_safetensors_fuzz, test_tokenizer_fuzz

SEED_TENSORS = {
    "weight": np.arange(24, dtype=np.float32).reshape(4, 6),
    "half": np.ones(5, np.float16),
    "ids": np.arange(7, dtype=np.int64),
    "mask": np.array([True, False]),
    "scalar": np.float32(1.5),
}


def _seed_pth(folder: pathlib.Path) -> pathlib.Path:
    write_pth(folder / "seed.pth", SEED_TENSORS)
    return folder / "seed.pth"


def _seed_safetensors(folder: pathlib.Path) -> pathlib.Path:
    write_safetensors(folder / "seed.safetensors", SEED_TENSORS, metadata={"format": "pt"})
    return folder / "seed.safetensors"


def _seed_binidx(folder: pathlib.Path) -> pathlib.Path:
    write_binidx(folder / "seed", [np.arange(n, dtype=np.uint16) for n in (5, 0, 12, 3)])
    return folder / "seed.idx"


def _seed_world(folder: pathlib.Path) -> pathlib.Path:
    lines = world.VOCAB_FILE.read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "seed.txt").write_text("".join(lines[:256] + lines[256::61]), encoding="utf-8")
    return folder / "seed.txt"


_mmap = itertools.cycle([False, True])


def _check_pth(path: pathlib.Path) -> None:
    test_pth_fuzz.check_read_pth(path, next(_mmap), test_pth_fuzz.ANY_MEMORY_FACTOR)


def _check_binidx(path: pathlib.Path) -> None:
    test_binidx_fuzz.check_binidx(path.with_suffix(""))  # the reader takes the prefix of .bin / .idx


# target: (writes the seed file into a folder and returns its path, checks one input file)
TARGETS: dict[str, tuple[Callable[[pathlib.Path], pathlib.Path], Callable[[pathlib.Path], object]]] = {
    "pth": (_seed_pth, _check_pth),
    "safetensors": (_seed_safetensors, test_safetensors_fuzz.check),
    "binidx": (_seed_binidx, _check_binidx),
    "world": (_seed_world, test_tokenizer_fuzz.check_world),
}


def rss_limit_mb(argv: list[str], growth_mb: int = 2048) -> list[str]:
    """libFuzzer's ``-rss_limit_mb`` flag: ``growth_mb`` above this process's peak resident memory at start.

    libFuzzer reads the peak as ``getrusage``'s ``ru_maxrss``, which Linux carries over ``fork`` + ``exec``
    from the parent: under a pytest worker that has run models it starts at 3-4 GB, above libFuzzer's
    default limit (2048 MB), and the run fails as out of memory whenever its once-a-second check fires.
    Empty when the flag is among ``argv`` (the caller's own limit stands).
    """
    if any(flag.startswith("-rss_limit_mb=") for flag in argv):
        return []
    start_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # Linux reports KiB
    return [f"-rss_limit_mb={start_mb + growth_mb}"]


def main(argv: list[str]) -> None:
    names = [*TARGETS, "all"]
    if len(argv) < 2 or argv[1] not in names:
        sys.exit(f"usage: python -m tests.fuzz.atheris_readers {{{','.join(names)}}} [libFuzzer flags]")
    chosen = list(TARGETS) if argv[1] == "all" else [argv[1]]
    work = pathlib.Path(tempfile.mkdtemp(prefix="atheris-"))
    seeds, inputs = work / "seeds", work / "inputs"
    seeds.mkdir()
    inputs.mkdir()
    files = []
    for index, name in enumerate(chosen):
        write_seed, check = TARGETS[name]
        (inputs / name).mkdir()
        path = write_seed(inputs / name)
        files.append((path, check))
        # "all": the first byte of an input picks its target, so one corpus mixes every reader
        selector = bytes([index]) if len(chosen) > 1 else b""
        (seeds / name).write_bytes(selector + path.read_bytes())

    def one_input(data: bytes) -> None:
        if len(chosen) > 1:
            if not data:
                return
            selected, data = data[0] % len(chosen), data[1:]
        else:
            selected = 0
        path, check = files[selected]
        path.write_bytes(data)  # the seed's own name: binidx needs its .bin beside the .idx
        check(path)

    atheris.Setup([argv[0], "-timeout=0", *rss_limit_mb(argv), *argv[2:], str(seeds)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
