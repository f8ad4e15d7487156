"""The attacks on read_pth that fuzzing is built to find, one each, deterministically (each one failed
before the reader's fixes: the exception or the measurement it gave is in the test's comment)."""

import collections
import pathlib
import pickle
import zipfile

import pytest

from rwkv_jax.checkpoint.pth import PthFormatError
from tests.fuzz import pickles as P  # noqa: N812 (P: the pickle assembler)
from tests.fuzz.test_pth_fuzz import STORED_MEMORY_FACTOR, _torch, check_read_pth, write_torch_zip

EMPTY = P.PROTO + P.ordered_dict([]) + P.STOP
COLLIDING_KEYS = b"".join(P.integer(k * (2**61 - 1)) + b"N" for k in range(1, 20_000))


def _pickle_file(path: pathlib.Path, ops: bytes) -> None:
    write_torch_zip(path, P.PROTO + ops + b"0" + P.ordered_dict([]) + P.STOP, {}, b"little")


ATTACKS = {
    # 1 GB allocated by the C unpickler's memo for a 30-byte file (index 2**26; 2**32 - 1 asks for 32 GB).
    "memo_index_2**32-1": lambda p: _pickle_file(p, P.EMPTY_TUPLE + P.memo_put(2**32 - 1)),
    # 2.2 s for 20,000 keys, quadratic in the file's size: hash-colliding int keys in one dict.
    "colliding_dict_keys": lambda p: _pickle_file(p, b"}" + P.MARK + COLLIDING_KEYS + P.SETITEMS),
    # RecursionError (not a PthFormatError) from the repr in the error message.
    "deep_persistent_id": lambda p: _pickle_file(p, P.deep_tuples(P.EMPTY_TUPLE, 100_000) + P.BINPERSID),
    # NEWOBJ, sets: opcodes a torch.save file never needs.
    "newobj": lambda p: _pickle_file(p, P.global_("collections", "OrderedDict") + P.EMPTY_TUPLE + b"\x81"),
    "frozenset": lambda p: _pickle_file(p, P.MARK + b"\x91"),
    "unknown_opcode": lambda p: _pickle_file(p, b"\xff"),
    # NotImplementedError from zipfile.
    "compression_method_99": lambda p: _patched(p, 10, b"\x63\x00"),
    # BadZipFile from zipfile, outside the reader's try.
    "byteorder_crc": lambda p: _patched(p, 16, b"\x00\x00\x00\x00", entry="archive/byteorder"),
    # bytearray of the declared size, allocated before the read found nothing there (mmap=False).
    "declared_size_4GB": lambda p: _patched(p, 20, b"\xff\xff\xff\xff" * 2, entry="archive/data.pkl"),
}

# A memo index below 2**32 is valid pickle; the reader's dict memo makes it cost nothing, so the file loads.
HARMLESS_NOW = {"memo_index_2**32-1"}


def _patched(path: pathlib.Path, offset: int, value: bytes, entry: str = "archive/data.pkl") -> None:
    """An empty state dict whose central directory record of ``entry`` has ``value`` at ``offset``."""
    write_torch_zip(path, EMPTY, {}, b"little")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        start = archive.start_dir
    record = data.index(b"PK\x01\x02" + bytes(42)[:0], start)
    while data[record + 46 : record + 46 + len(entry)] != entry.encode():
        record = data.index(b"PK\x01\x02", record + 4)
    data[record + offset : record + offset + len(value)] = value
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("mmap", [True, False])
def test_attack_raises_pth_format_error_within_bounds(tmp_path, attack, mmap):
    path = tmp_path / "attack.pth"
    ATTACKS[attack](path)
    outcome = check_read_pth(path, mmap, STORED_MEMORY_FACTOR, pickle_bytes=path.stat().st_size)
    if attack in HARMLESS_NOW:
        assert outcome == {}
    else:
        assert isinstance(outcome, PthFormatError)


def test_expanded_tensor_larger_than_the_file_is_refused(tmp_path):
    """A stride-0 view (torch's expand) of one float: 200 MB copied from a 1.5 KB file before the fix."""
    torch = _torch()
    torch.save({"w": torch.zeros(1).expand(50_000_000)}, tmp_path / "expand.pth")
    outcome = check_read_pth(tmp_path / "expand.pth", True, STORED_MEMORY_FACTOR)
    assert isinstance(outcome, PthFormatError) and "non-contiguous" in str(outcome)


def test_deflate_bomb_is_refused(tmp_path):
    """A data.pkl that inflates 1000-fold: 100 MB from a 100 KB file before the fix."""
    with zipfile.ZipFile(tmp_path / "bomb.pth", "w") as archive:
        body = pickle.dumps(collections.OrderedDict(), protocol=2)[:-1] + b"N0" * 50_000_000 + b"."
        archive.writestr("archive/data.pkl", body, compress_type=zipfile.ZIP_DEFLATED)
    outcome = check_read_pth(tmp_path / "bomb.pth", False, STORED_MEMORY_FACTOR)
    assert isinstance(outcome, PthFormatError) and "inflate" in str(outcome)
