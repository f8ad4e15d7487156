"""What every fuzz test of a file reader checks, and the hypothesis profile that sizes the run.

The property: reading a file either returns or raises the reader's own error type with a message that names
the file; it never runs code from the file, never takes longer than HARD_SECONDS (a SIGALRM stops a Python
loop that would hang, and the elapsed time is checked as well) and never allocates more than a stated
multiple of the file's size (tracemalloc's peak over the call, for readers that allocate through Python
or numpy).

The number of examples per test is RWKV_JAX_FUZZ_EXAMPLES (default SHORT_EXAMPLES, the budget of the
default suite); docs/reliability.md has the command of the long run.
"""

import contextlib
import os
import pathlib
import signal
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SHORT_EXAMPLES = 25
EXAMPLES = int(os.environ.get("RWKV_JAX_FUZZ_EXAMPLES", SHORT_EXAMPLES))
# Per example: hypothesis's deadline (reported with the example), and a hard stop far above it.
DEADLINE_SECONDS = 5.0
HARD_SECONDS = 20.0

settings.register_profile(
    "rwkv_jax_fuzz",
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=DEADLINE_SECONDS),
    database=None,  # no .hypothesis folder in the tree; a failure prints its reproduction blob instead
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
FUZZ = settings(settings.get_profile("rwkv_jax_fuzz"))


class ReaderHung(BaseException):
    """Raised by the alarm in a reader that ran past HARD_SECONDS (a BaseException: no reader catches it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises ReaderHung in the main thread once ``seconds`` have passed inside the block."""

    def on_alarm(signum, frame):
        raise ReaderHung(f"the reader ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_reader(
    read: Callable[[pathlib.Path], object],
    path: pathlib.Path,
    error_type: type[Exception],
    *,
    memory_factor: float,
    memory_slack: int = 2 << 20,
    names: str | None = None,
) -> object:
    """``read(path)``'s result, or the error_type it raised; asserts the property of the module docstring.

    memory_factor, memory_slack: the traced peak may be at most ``memory_factor * size + memory_slack``
    bytes, size being the bytes of ``path`` (a file) or of every file starting with it (a prefix).
    names: what the error message must contain (default: ``str(path)``).
    """
    size = _input_bytes(path)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with time_limit(HARD_SECONDS):
            outcome = read(path)
    except error_type as e:
        outcome = e
        assert (names or str(path)) in str(e), f"the error does not name the file: {e}"
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < HARD_SECONDS, f"reading took {elapsed:.1f} s"
    bound = memory_factor * size + memory_slack
    assert peak <= bound, f"reading a {size}-byte input allocated {peak} bytes at peak (bound {bound:.0f})"
    return outcome


def _input_bytes(path: pathlib.Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


# Little-endian integers that break size fields: all ones, the sign bit, zero, and values near 2**31/2**63.
HOSTILE_INTS = [
    struct.pack(fmt, value)
    for fmt, values in (
        ("<H", (0, 0xFFFF)),
        ("<I", (0, 0x7FFFFFFF, 0xFFFFFFFF)),
        ("<Q", (2**63 - 1, 2**64 - 1)),
    )
    for value in values
]


def edits(length: int, regions: list[tuple[int, int]] = ()) -> st.SearchStrategy:
    """1-4 edits of a ``length``-byte input, positions anywhere or inside ``regions`` ([start, end) spans).

    Each edit is (kind, position, bytes): "overwrite" writes the bytes at the position, "insert" inserts
    them, "delete" removes as many bytes there, "truncate" cuts the input at the position.
    """
    positions = st.one_of(st.integers(0, length), *(st.integers(a, max(a, b - 1)) for a, b in regions))
    payloads = st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from(HOSTILE_INTS))
    kinds = st.sampled_from(["overwrite", "overwrite", "insert", "delete", "truncate"])
    return st.lists(st.tuples(kinds, positions, payloads), min_size=1, max_size=4)


def mutate(data: bytes, edit_list: list[tuple[str, int, bytes]]) -> bytes:
    """``data`` with the edits of ``edits()`` applied in order (positions past the end clamp to it)."""
    out = bytearray(data)
    for kind, position, payload in edit_list:
        position = min(position, len(out))
        if kind == "overwrite":
            out[position : position + len(payload)] = payload
        elif kind == "insert":
            out[position:position] = payload
        elif kind == "delete":
            del out[position : position + len(payload)]
        else:
            del out[position:]
    return bytes(out)
