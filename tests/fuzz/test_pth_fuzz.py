"""read_pth under attack: mutated torch.save files, mutated trained checkpoints, hand-assembled pickles.

Short run (part of the default suite):   python -m pytest -q tests/fuzz
Long run (docs/reliability.md):          RWKV_JAX_FUZZ_EXAMPLES=2000 python -m pytest -q tests/fuzz

Every input must load (a dict of arrays) or raise PthFormatError naming the file, within the time and
memory bounds of tests/fuzz/harness.py, and no payload in a pickle may run (a sentinel file would appear).
"""

import collections
import importlib
import io
import pathlib
import struct
import time
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rwkv_jax.checkpoint.pth import PthFormatError, read_pth
from rwkv_jax.checkpoint.pth_format import STORAGE_DTYPES, TORCH_DTYPES
from rwkv_jax.checkpoint.pth_read import MAX_INFLATION
from tests.conftest import skip_or_fail
from tests.fuzz import harness
from tests.fuzz import pickles as P  # noqa: N812 (P: the pickle assembler, used on most lines)
from tests.fuzz.harness import FUZZ

# Peak memory of one read, in multiples of the file's size (plus 2 MiB): storages read into memory (1x),
# strided copies (at most 4x, pth_read.MAX_COPY_FACTOR), Python objects of the pickle. Deflated entries
# may inflate MAX_INFLATION-fold, so files that may hold them get that much more.
STORED_MEMORY_FACTOR = 8
ANY_MEMORY_FACTOR = STORED_MEMORY_FACTOR + MAX_INFLATION
# Unpickling makes Python objects: up to about 72 bytes for a one-byte opcode (a tuple, a list and its slot on
# the stack), so data.pkl may cost this many times its size on top (a real data.pkl is about 100 bytes a
# tensor, a fraction of a percent of a checkpoint).
PICKLE_MEMORY_FACTOR = 128


def _torch():
    try:
        return importlib.import_module("torch")
    except ImportError:
        skip_or_fail("torch (a test dependency) is not installed: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def torch_save_file(tmp_path_factory) -> pathlib.Path:
    """A small torch.save state dict: several dtypes, views, a shared storage, a parameter.

    Fixtures give paths, not bytes: hypothesis prints every argument of a failing example.
    """
    torch = _torch()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = collections.OrderedDict(
        weight=base,
        transposed=base.T,
        rows=base[1:3],
        expanded=torch.arange(3.0).reshape(3, 1).expand(3, 4),
        half=torch.ones(5, dtype=torch.float16),
        bf16=torch.zeros(2, 2, dtype=torch.bfloat16),
        ids=torch.arange(7, dtype=torch.int64),
        mask=torch.tensor([True, False]),
        u16=torch.arange(3, dtype=torch.int32).to(torch.uint16),
        param=torch.nn.Parameter(torch.ones(2)),
        scalar=torch.tensor(1.5),
    )
    path = tmp_path_factory.mktemp("torch_save") / "small.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_rwkv_dir) -> pathlib.Path:
    return tiny_rwkv_dir / "tiny-rwkv-4v0-660K.pth"


def structure_regions(data: bytes) -> list[tuple[int, int]]:
    """[start, end) spans of a zip's structure: local headers, the data.pkl bytes, the central directory."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        regions = [(archive.start_dir, len(data))]
        for info in archive.infolist():
            name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
            body = info.header_offset + 30 + name_length + extra_length
            regions.append((info.header_offset, body))
            if info.filename.endswith("data.pkl"):
                regions.append((body, body + info.compress_size))
    return regions


def check_read_pth(
    path: pathlib.Path,
    mmap: bool,
    memory_factor: float,
    sentinel: pathlib.Path | None = None,
    pickle_bytes: int = 0,
):
    """The fuzz property for read_pth; returns what it read or the PthFormatError.

    pickle_bytes: the size of data.pkl, which may cost PICKLE_MEMORY_FACTOR times as much in objects.
    """
    outcome = harness.check_reader(
        lambda p: read_pth(p, mmap=mmap),
        path,
        PthFormatError,
        memory_factor=memory_factor,
        memory_slack=(2 << 20) + PICKLE_MEMORY_FACTOR * pickle_bytes,
    )
    if not isinstance(outcome, PthFormatError):
        assert isinstance(outcome, dict)
        assert all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in outcome.items())
    if sentinel is not None:
        assert not sentinel.exists(), "a payload in the pickle ran"
    return outcome


@FUZZ
@given(data=st.data(), mmap=st.booleans())
def test_mutated_torch_save_file_loads_or_raises_pth_format_error(tmp_path, torch_save_file, data, mmap):
    original = torch_save_file.read_bytes()
    edit_list = data.draw(harness.edits(len(original), structure_regions(original)), label="edits")
    path = tmp_path / f"mutated-{time.perf_counter_ns()}.pth"
    path.write_bytes(harness.mutate(original, edit_list))
    check_read_pth(path, mmap, ANY_MEMORY_FACTOR)


@FUZZ
@given(data=st.data(), mmap=st.booleans())
def test_mutated_trained_checkpoint_loads_or_raises_pth_format_error(
    tmp_path, trained_checkpoint, data, mmap
):
    original = trained_checkpoint.read_bytes()
    edit_list = data.draw(harness.edits(len(original), structure_regions(original)), label="edits")
    path = tmp_path / f"mutated-{time.perf_counter_ns()}.pth"
    path.write_bytes(harness.mutate(original, edit_list))
    check_read_pth(path, mmap, ANY_MEMORY_FACTOR)


# Hostile integers for sizes, strides, offsets and element counts.
HOSTILE = st.sampled_from([-1, 2**31, 2**63 - 1, 2**63, 2**64, 2**100, -(2**70)])
STORAGE_NAMES = [*STORAGE_DTYPES, "QInt8Storage", "Float8_e4m3fnStorage", "Storage", "FloatStorag"]
DTYPE_NAMES = [*TORCH_DTYPES, "float32", "complex32", "float4_e2m1fn_x2", "qint8"]
REBUILDS = ["_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_qtensor", "_rebuild_sparse_tensor"]
TENSOR_FIELDS = ["storage_type", "numel", "offset", "size", "stride", "rebuild", "dtype", "ndim"]


@st.composite
def tensor_ops(draw, storages: dict[str, tuple[str, int]], sentinel: pathlib.Path) -> bytes:
    """The pickle ops of one state dict value: a valid tensor with at most two fields made hostile.

    storages: storage key -> (storage class name, element count) of tensors drawn before; a new key's
    storage is sized for this tensor, so that most tensors are valid until a field is broken.
    """
    size = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    stride = tuple(int(np.prod(size[i + 1 :])) for i in range(len(size)))
    if draw(st.booleans()):  # a transposed or broadcast view of the same storage elements
        stride = tuple(draw(st.sampled_from([s, 0, 1])) for s in stride)
    key = draw(st.sampled_from(["0", "1", "x"]))
    storage_type, numel = storages.setdefault(
        key, (draw(st.sampled_from(sorted(STORAGE_DTYPES))), int(np.prod(size)))
    )
    fields = {"storage_type": storage_type, "numel": numel, "offset": 0, "size": size, "stride": stride}
    fields |= {"rebuild": "_rebuild_tensor_v2", "dtype": "uint16"}
    for field in draw(st.lists(st.sampled_from(TENSOR_FIELDS), max_size=2)):
        if field == "storage_type":
            fields[field] = draw(st.sampled_from(STORAGE_NAMES))
        elif field == "rebuild":
            fields[field] = draw(st.sampled_from(REBUILDS))
        elif field == "dtype":
            fields[field] = draw(st.sampled_from(DTYPE_NAMES))
        elif field == "ndim":  # more dimensions than numpy allows, or a stride missing
            fields["size"] = draw(st.sampled_from([(1,) * 70, (*size, 1)]))
        elif field in ("size", "stride"):
            values = list(fields[field]) or [1]
            values[draw(st.integers(0, len(values) - 1))] = draw(HOSTILE)
            fields[field] = tuple(values)
        else:
            fields[field] = draw(HOSTILE)
    v3 = fields["rebuild"] == "_rebuild_tensor_v3"
    persid = P.storage(
        "UntypedStorage" if v3 else fields["storage_type"],
        key,
        fields["numel"],
        "torch.storage" if v3 else "torch",
    )
    arguments = [
        persid,
        P.integer(fields["offset"]),
        P.index_tuple(fields["size"]),
        P.index_tuple(fields["stride"]),
    ]
    arguments += [P.NEWFALSE, P.call(P.global_("collections", "OrderedDict"))]
    if v3:
        arguments.append(P.global_("torch", fields["dtype"]))
    tensor = P.call(P.global_("torch._utils", fields["rebuild"]), *arguments)
    if draw(st.booleans()):
        empty = P.call(P.global_("collections", "OrderedDict"))
        tensor = P.call(P.global_("torch._utils", "_rebuild_parameter"), tensor, P.NEWFALSE, empty)
    return draw(hostile_prefix(sentinel)) + tensor


POP = b"0"


@st.composite
def hostile_prefix(draw, sentinel: pathlib.Path) -> bytes:
    """Ops that leave the stack as it was, or stop the load: deep nesting, memo abuse, payloads, opcodes."""
    kind = draw(st.sampled_from(["none", "none", "deep", "memo", "collide", "payload", "eval", "opcode"]))
    if kind == "deep":  # 100,000 nested tuples: nothing may recurse over them
        return P.deep_tuples(P.EMPTY_TUPLE, draw(st.sampled_from([10, 1000, 100_000]))) + POP
    if kind == "memo":  # a memo entry at a huge index, read back (the C unpickler allocated 8 bytes an index)
        index = draw(st.sampled_from([2**20, 2**28, 2**32 - 1]))
        return P.EMPTY_TUPLE + P.memo_put(index) + POP + P.memo_get(index) + POP
    if kind == "collide":  # int keys that all hash alike (multiples of 2**61 - 1): a quadratic dict
        keys = [P.integer(k * (2**61 - 1)) + b"N" for k in range(1, draw(st.sampled_from([10, 5000])))]
        return b"}" + P.MARK + b"".join(keys) + P.SETITEMS + POP
    if kind == "payload":
        return P.system_call(f"touch {sentinel}") + POP
    if kind == "eval":
        return P.call(P.global_("builtins", "eval"), P.string(f"open({str(sentinel)!r}, 'w')")) + POP
    if kind == "opcode":  # unknown (0xff), or allowed by pickle but not here (set, NEWOBJ)
        return draw(
            st.sampled_from(
                [
                    b"\xff",
                    b"\x8f" + POP,
                    P.global_("collections", "OrderedDict") + P.EMPTY_TUPLE + b"\x81" + POP,
                ]
            )
        )
    return b""


@st.composite
def assembled_checkpoints(draw, sentinel: pathlib.Path) -> tuple[bytes, dict[str, bytes], bytes]:
    """(data.pkl, storage entries, byteorder) of a torch.save-like file with hand-assembled tensors."""
    storages: dict[str, tuple[str, int]] = {}
    names = st.sampled_from(["w", "b", "blocks.0.att.key.weight", "w"])
    items = [
        (P.string(draw(names)), draw(tensor_ops(storages, sentinel))) for _ in range(draw(st.integers(0, 3)))
    ]
    pickled = P.PROTO + P.ordered_dict(items) + P.STOP
    entries = {}
    for key, (type_name, numel) in storages.items():
        nbytes = numel * STORAGE_DTYPES.get(type_name, np.dtype(np.uint8)).itemsize
        if draw(st.integers(0, 4)) == 0:  # missing, or of the wrong size
            nbytes = draw(st.sampled_from([None, max(nbytes - 1, 0), nbytes + 1]))
        if nbytes is not None:
            entries[key] = draw(st.binary(min_size=nbytes, max_size=nbytes))
    return pickled, entries, draw(st.sampled_from([b"little"] * 6 + [b"big", b""]))


def write_torch_zip(path: pathlib.Path, pickled: bytes, storages: dict[str, bytes], byteorder: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        if byteorder:
            archive.writestr("archive/byteorder", byteorder)
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)


@FUZZ
@given(data=st.data(), mmap=st.booleans())
def test_assembled_pickles_load_or_raise_and_never_run_code(tmp_path, data, mmap):
    sentinel = tmp_path / f"payload-ran-{time.perf_counter_ns()}"
    pickled, storages, byteorder = data.draw(assembled_checkpoints(sentinel), label="checkpoint")
    path = tmp_path / f"assembled-{time.perf_counter_ns()}.pth"
    write_torch_zip(path, pickled, storages, byteorder)
    check_read_pth(path, mmap, STORED_MEMORY_FACTOR, sentinel, pickle_bytes=len(pickled))


# Central directory fields of a zip entry (offsets in its record) that a structured edit may overwrite.
CD_FIELDS = {
    "method": (10, "<H"),
    "compress_size": (20, "<I"),
    "file_size": (24, "<I"),
    "header_offset": (42, "<I"),
}


def patch_central_directory(data: bytes, entry: int, field: str, value: int) -> bytes:
    """``data`` (a zip) with ``field`` of the ``entry``-th central directory record set to ``value``."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        position, count = archive.start_dir, len(archive.infolist())
    out = bytearray(data)
    for _ in range(entry % count):
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", out, position + 28)
        position += 46 + name_length + extra_length + comment_length
    offset, fmt = CD_FIELDS[field]
    struct.pack_into(fmt, out, position + offset, value % (1 << (8 * struct.calcsize(fmt))))
    return bytes(out)


@st.composite
def zip_edits(draw, original: bytes) -> bytes:
    """A torch.save file rebuilt with entries renamed, dropped, duplicated, deflated or mis-declared."""
    with zipfile.ZipFile(io.BytesIO(original)) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in entries:
            action = draw(st.sampled_from(["keep"] * 6 + ["drop", "rename", "duplicate", "deflate", "zeros"]))
            if action == "drop":
                continue
            if action == "rename":
                name = draw(st.sampled_from([name + "x", "other/" + name.split("/", 1)[-1], name.upper()]))
            if action == "zeros":  # a storage of zeros: deflates about 1000-fold
                content = bytes(max(len(content), 1 << 16))
            compress = zipfile.ZIP_DEFLATED if action in ("deflate", "zeros") else zipfile.ZIP_STORED
            archive.writestr(name, content, compress_type=compress)
            if action == "duplicate":
                archive.writestr("copy/" + name.split("/", 1)[-1], content)
    data = out.getvalue()
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from(sorted(CD_FIELDS)))
        value = draw(st.sampled_from([0, 1, 99, 2**16 - 1, 2**31, 2**32 - 1, len(data), 10 * len(data)]))
        data = patch_central_directory(data, draw(st.integers(0, 100)), field, value)
    return data


@FUZZ
@given(data=st.data(), mmap=st.booleans())
def test_zip_level_edits_load_or_raise_pth_format_error(tmp_path, torch_save_file, data, mmap):
    path = tmp_path / f"zip-edit-{time.perf_counter_ns()}.pth"
    path.write_bytes(data.draw(zip_edits(torch_save_file.read_bytes()), label="file"))
    check_read_pth(path, mmap, ANY_MEMORY_FACTOR)


def test_unmutated_inputs_load(torch_save_file):
    """The fuzzers' starting points load: a fuzz test whose every input fails would test nothing."""
    assert list(check_read_pth(torch_save_file, False, STORED_MEMORY_FACTOR)) == [
        "weight", "transposed", "rows", "expanded", "half", "bf16", "ids", "mask", "u16", "param", "scalar"
    ]  # fmt: skip
