"""read_pth / write_pth against torch.save / torch.load (torch is only a test reference here)."""

import collections
import io
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from rwkv_jax.checkpoint import pth_write
from rwkv_jax.checkpoint.pth import PthFormatError, read_pth, write_pth
from tests.conftest import import_or_skip

# Every dtype read_pth understands, by torch dtype name; the last seven are saved with _rebuild_tensor_v3.
DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
    "complex64": np.complex64,
    "complex128": np.complex128,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
}
WRITABLE_DTYPES = list(DTYPES)[:12]
SHAPES = [(), (0,), (2, 0, 3), (5,), (2, 3, 4)]


def _values(shape: tuple[int, ...], dtype, seed: int) -> np.ndarray:
    """Random values of `dtype` exactly representable in it (small integers, halves)."""
    halves = np.random.default_rng(seed).integers(-8, 8, size=shape) / 2
    kind = np.dtype(dtype).kind
    if kind == "b":
        return np.asarray(halves > 0)
    if kind in "iu":
        return np.asarray(np.abs(halves * 2) if kind == "u" else halves * 2, dtype)
    if kind == "c":
        return np.asarray(halves + 1j * (halves - 1), dtype)
    return np.asarray(halves, dtype)


def _torch_dtype_name(dtype: np.dtype) -> str:
    return next(name for name, candidate in DTYPES.items() if np.dtype(candidate) == dtype)


def _to_torch(array: np.ndarray):
    """The torch tensor with `array`'s dtype and values (via a same-size int view: from_numpy lacks bf16)."""
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    if array.dtype.itemsize == 16:  # complex128: from_numpy handles it and there is no int128
        return torch.from_numpy(array.copy())
    raw = torch.from_numpy(np.array(array, order="C").view(f"i{array.dtype.itemsize}"))
    return raw.view(getattr(torch, _torch_dtype_name(array.dtype)))


def _to_numpy(tensor) -> np.ndarray:
    """The numpy array with `tensor`'s dtype and values (the inverse of `_to_torch`)."""
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    if tensor.element_size() == 16:
        return tensor.numpy()
    raw = tensor.contiguous().view(getattr(torch, f"int{8 * tensor.element_size()}")).numpy()
    return raw.view(DTYPES[str(tensor.dtype).removeprefix("torch.")])


def _assert_same(loaded: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Same keys in the same order, same dtypes (little-endian), shapes and bits."""
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        value = value.astype(value.dtype.newbyteorder("<"))
        assert (loaded[key].dtype, loaded[key].shape) == (value.dtype, value.shape), key
        assert loaded[key].tobytes() == value.tobytes(), key


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_read_pth_reads_torch_save_of_every_dtype_and_shape(tmp_path, dtype_name):
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    expected = {f"t{i}": _values(shape, DTYPES[dtype_name], i) for i, shape in enumerate(SHAPES)}
    torch.save(collections.OrderedDict((k, _to_torch(v)) for k, v in expected.items()), tmp_path / "x.pth")
    _assert_same(read_pth(tmp_path / "x.pth"), expected)
    _assert_same(read_pth(tmp_path / "x.pth", mmap=False), expected)


@pytest.mark.parametrize("mmap", [True, False])
def test_read_pth_reads_views_with_offsets_strides_and_shared_storage(tmp_path, mmap):
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = {
        "base": base,
        "transposed": base.T,
        "rows_from_1": base[1:],
        "strided_slice": base[1:3, ::2],
        "broadcast": torch.arange(3.0).reshape(3, 1).expand(3, 4),
        "scalar_in_middle": base[2, 3],
        "other": torch.ones(2, dtype=torch.float64),
    }
    torch.save(views, tmp_path / "views.pth")
    loaded = read_pth(tmp_path / "views.pth", mmap=mmap)
    _assert_same(loaded, {k: v.numpy() for k, v in views.items()})
    assert all(a.flags.c_contiguous for a in loaded.values())
    assert np.shares_memory(loaded["base"], loaded["rows_from_1"])  # one storage, as in torch


def test_read_pth_unwraps_parameters_with_and_without_state(tmp_path):
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    with_state = torch.nn.Parameter(torch.ones(3))
    with_state.note = "extra attribute"  # pickled through _rebuild_parameter_with_state
    torch.save({"plain": torch.nn.Parameter(torch.zeros(2, 2)), "with_state": with_state}, tmp_path / "p.pth")
    _assert_same(
        read_pth(tmp_path / "p.pth"),
        {"plain": np.zeros((2, 2), np.float32), "with_state": np.ones(3, np.float32)},
    )


def test_memory_mapped_arrays_are_copy_on_write(tmp_path):
    write_pth(tmp_path / "w.pth", {"w": np.zeros(4, np.float32)})
    read_pth(tmp_path / "w.pth")["w"][:] = 7
    np.testing.assert_array_equal(read_pth(tmp_path / "w.pth")["w"], np.zeros(4, np.float32))


def test_read_pth_reads_deflated_entries(tmp_path):
    expected = {"a": _values((3, 5), np.float32, 0), "b": _values((7,), ml_dtypes.bfloat16, 1)}
    write_pth(tmp_path / "stored.pth", expected)
    with (
        zipfile.ZipFile(tmp_path / "stored.pth") as src,
        zipfile.ZipFile(tmp_path / "deflated.pth", "w") as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    _assert_same(read_pth(tmp_path / "deflated.pth"), expected)


@pytest.mark.parametrize("mmap", [True, False])
def test_fixture_checkpoints_match_torch_load(tiny_rwkv_dir, mmap):
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    for path in sorted(tiny_rwkv_dir.glob("*.pth")):
        expected = torch.load(path, weights_only=True)
        _assert_same(read_pth(path, mmap=mmap), {k: v.numpy() for k, v in expected.items()})


def test_read_pth_runs_without_torch(tiny_rwkv_dir):
    """In a fresh interpreter: reading a checkpoint imports neither torch nor anything that imports it."""
    path = tiny_rwkv_dir / "tiny-rwkv-4v0-660K.pth"
    script = (
        "import sys; from rwkv_jax.checkpoint.pth import read_pth; "
        f"tensors = read_pth({str(path)!r}); "
        "assert len(tensors) == 78, len(tensors); assert 'torch' not in sys.modules, 'torch was imported'"
    )
    root = pathlib.Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, "-c", script], check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}
    )


def _written(tmp_path, tensors) -> dict[str, np.ndarray]:
    write_pth(tmp_path / "out.pth", tensors)
    return {k: np.asarray(v) for k, v in tensors.items()}


def _mixed_tensors() -> dict[str, np.ndarray]:
    tensors = {
        f"{name}.{i}": _values(s, DTYPES[name], i) for name in WRITABLE_DTYPES for i, s in enumerate(SHAPES)
    }
    tensors["transposed"] = np.arange(12, dtype=np.float32).reshape(3, 4).T
    tensors["big_endian"] = np.arange(5, dtype=">i4")
    tensors["large_int"] = np.array([2**40, -(2**62)], np.int64)
    return tensors


@pytest.mark.parametrize("weights_only", [True, False])
@pytest.mark.parametrize("mmap", [True, False])
def test_torch_load_reads_write_pth_output_exactly(tmp_path, weights_only, mmap):
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    expected = _written(tmp_path, _mixed_tensors())
    loaded = torch.load(tmp_path / "out.pth", weights_only=weights_only, mmap=mmap)
    assert type(loaded) is collections.OrderedDict
    assert all(t.is_contiguous() and t.storage_offset() == 0 for t in loaded.values())
    _assert_same({k: _to_numpy(v) for k, v in loaded.items()}, expected)


def test_write_pth_then_read_pth_round_trips(tmp_path):
    expected = _written(tmp_path, _mixed_tensors())
    _assert_same(read_pth(tmp_path / "out.pth"), expected)


def test_write_pth_accepts_jax_arrays(tmp_path):
    jnp = import_or_skip("jax.numpy", "needs jax.numpy (pip install -e .[test])")
    tensors = {"w": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3).T, "b": jnp.ones((), jnp.float32)}
    write_pth(tmp_path / "jax.pth", tensors)
    _assert_same(read_pth(tmp_path / "jax.pth"), {k: np.asarray(v) for k, v in tensors.items()})


def test_write_pth_can_replace_the_file_its_input_is_mapped_from(tmp_path):
    write_pth(tmp_path / "m.pth", {"w": np.arange(4, dtype=np.float32)})
    mapped = read_pth(tmp_path / "m.pth")
    write_pth(tmp_path / "m.pth", {"w": mapped["w"] * 2, "old": mapped["w"]})
    expected = {"w": np.arange(4, dtype=np.float32) * 2, "old": np.arange(4, dtype=np.float32)}
    _assert_same(read_pth(tmp_path / "m.pth"), expected)
    _assert_same(mapped, {"w": expected["old"]})  # the old mapping still reads the old file


def test_empty_state_dict_round_trips(tmp_path):
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    write_pth(tmp_path / "empty.pth", {})
    assert torch.load(tmp_path / "empty.pth", weights_only=True) == collections.OrderedDict()
    assert read_pth(tmp_path / "empty.pth") == {}


def _data_offsets(path) -> dict[str, int]:
    """Where each zip entry's bytes start in the file."""
    offsets = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as file:
        for info in archive.infolist():
            file.seek(info.header_offset + 26)
            name_length, extra_length = struct.unpack("<HH", file.read(4))
            offsets[info.filename] = info.header_offset + 30 + name_length + extra_length
    return offsets


@pytest.mark.parametrize("zip64_above_bytes", [pth_write._ZIP64_ENTRY_BYTES, -1])
def test_write_pth_uses_torch_layout_with_aligned_storages(tmp_path, monkeypatch, zip64_above_bytes):
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    monkeypatch.setattr(pth_write, "_ZIP64_ENTRY_BYTES", zip64_above_bytes)  # -1: every entry zip64
    tensors = {"a": np.ones(3, np.float16), "b": np.arange(7, dtype=np.int64), "c": np.zeros((), np.float32)}
    write_pth(tmp_path / "model.v1.pth", tensors)
    with zipfile.ZipFile(tmp_path / "model.v1.pth") as archive:
        names = archive.namelist()
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        assert archive.read("model.v1/byteorder") == b"little"
        assert archive.read("model.v1/version") == b"3\n"
    assert names == [
        f"model.v1/{n}" for n in ("data.pkl", "byteorder", "data/0", "data/1", "data/2", "version")
    ]
    offsets = _data_offsets(tmp_path / "model.v1.pth")
    assert all(offsets[f"model.v1/data/{i}"] % 64 == 0 for i in range(3))
    loaded = torch.load(tmp_path / "model.v1.pth", weights_only=True, mmap=True)
    _assert_same({k: v.numpy() for k, v in loaded.items()}, tensors)


def _torch_zip(path, pickled: bytes, storages: dict[str, bytes] | None = None, byteorder: bytes = b"little"):
    """A zip laid out like torch.save's, holding the given data.pkl and storage entries."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", byteorder)
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", b"3\n")


def _zip_without_data_pkl(path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/version", b"3\n")


class _ReducePayload:
    """Unpickling this object runs `function(argument)`: the classic pickle exploit."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def _payloads(marker) -> dict[str, bytes]:
    """Pickles that create `marker` when unpickled, by the forbidden global each calls."""
    command, code = f"touch {marker}", f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": f"cos\nsystem\n(V{command}\ntR.".encode(),  # hand-written protocol 0
        "__builtin__.exec": pickle.dumps(_ReducePayload(exec, code), protocol=2),  # Python 2 spelling
        "builtins.eval": pickle.dumps(_ReducePayload(eval, code), protocol=4),  # STACK_GLOBAL
        f"{os.system.__module__}.system": pickle.dumps(_ReducePayload(os.system, command), protocol=2),
        "subprocess.call": pickle.dumps(
            collections.OrderedDict(weight=_ReducePayload(subprocess.call, ["touch", str(marker)])),
            protocol=2,
            fix_imports=False,
        ),
    }


PAYLOAD_GLOBALS = list(_payloads("unused"))


@pytest.mark.parametrize("forbidden", PAYLOAD_GLOBALS)
def test_payloads_run_under_plain_pickle(tmp_path, forbidden):
    """The payloads are live: without the restricted unpickler they create the marker file."""
    marker = tmp_path / "payload_ran"
    pickle.loads(_payloads(marker)[forbidden])
    assert marker.exists()


@pytest.mark.parametrize("forbidden", PAYLOAD_GLOBALS)
def test_read_pth_refuses_code_in_the_pickle_without_running_it(tmp_path, forbidden):
    marker = tmp_path / "payload_ran"
    _torch_zip(tmp_path / "evil.pth", _payloads(marker)[forbidden])
    with pytest.raises(PthFormatError, match=f"forbidden global {forbidden}"):
        read_pth(tmp_path / "evil.pth")
    assert not marker.exists()


class _Call:
    """Pickles as `function(*arguments)`, naming `function` as a global: how torch pickles a tensor."""

    def __init__(self, function, *arguments):
        self.function, self.arguments, self.state = function, arguments, None

    def __reduce__(self):
        return self.function, self.arguments, self.state


def _tensor_pickle(storage_numel: int, offset: int, size: tuple, stride: tuple, state=None) -> bytes:
    """data.pkl of {"w": a float32 tensor (offset, size, stride) of storage "0" (`storage_numel` elements)}.

    With `state`, the pickle also sets that as the tensor's attributes (pickle's BUILD opcode).
    """
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    storage = object()

    class StoragePickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", storage_numel) if obj is storage else None

    rebuild = _Call(
        torch._utils._rebuild_tensor_v2, storage, offset, size, stride, False, collections.OrderedDict()
    )
    rebuild.state = state
    buffer = io.BytesIO()
    StoragePickler(buffer, protocol=2).dump(collections.OrderedDict(w=rebuild))
    return buffer.getvalue()


def _misused_rebuild_pickle() -> bytes:
    """data.pkl calling _rebuild_tensor_v2 (an allowed global) on a string instead of a storage."""
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    rebuild = _Call(
        torch._utils._rebuild_tensor_v2, "no storage", 0, (1,), (1,), False, collections.OrderedDict()
    )
    return pickle.dumps({"w": rebuild}, protocol=2)


def test_crafted_tensor_pickle_is_what_torch_loads(tmp_path):
    """Checks the crafting helper of the malformed-file tests on a well-formed case."""
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    _torch_zip(
        tmp_path / "ok.pth",
        _tensor_pickle(6, 1, (2, 2), (1, 2)),
        {"0": np.arange(6, dtype=np.float32).tobytes()},
    )
    expected = torch.load(tmp_path / "ok.pth", weights_only=True)["w"].numpy()
    _assert_same(read_pth(tmp_path / "ok.pth"), {"w": expected})


def _save_with_torch(path, obj, **save_options) -> None:
    torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
    torch.save(obj, path, **save_options)


@pytest.mark.parametrize(
    ("make_file", "message"),
    [
        (lambda p: p.write_bytes(b"just some text, not a checkpoint\n"), "not a zip archive"),
        (lambda p: p.write_bytes(b""), "not a zip archive"),
        (_zip_without_data_pkl, r"one <archive>/data\.pkl entry"),
        (
            lambda p: _torch_zip(p, _tensor_pickle(4, 0, (4,), (1,))),
            r"storage entry archive/data/0 is missing",
        ),
        (
            lambda p: _torch_zip(p, _tensor_pickle(4, 0, (4,), (1,)), {"0": bytes(8)}),
            "holds 8 bytes, expected 16",
        ),
        (
            lambda p: _torch_zip(p, _tensor_pickle(4, 1, (2, 2), (2, 1)), {"0": bytes(16)}),
            "reads element 4 of",
        ),
        (lambda p: _torch_zip(p, _tensor_pickle(4, 3, (2,), (-1,)), {"0": bytes(16)}), "tuples of ints >= 0"),
        (
            lambda p: _torch_zip(p, _tensor_pickle(4, 0, (4,), (1,)), {"0": bytes(16)}, b"big"),
            "little-endian",
        ),
        (lambda p: _torch_zip(p, pickle.dumps(collections.OrderedDict(w=2.0))), "entry 'w' holds float"),
        (lambda p: _torch_zip(p, pickle.dumps([1, 2])), "expected a state dict"),
        (lambda p: _torch_zip(p, b"\x80\x02}q\x00(X"), "data.pkl is corrupt"),
        (lambda p: _save_with_torch(p, {"model": {}}), "entry 'model' holds dict"),
        (lambda p: _torch_zip(p, _misused_rebuild_pickle()), "storage must come from a persistent id"),
        (
            lambda p: _torch_zip(p, _tensor_pickle(4, 0, (4,), (1,), state={"array": 1}), {"0": bytes(16)}),
            "tries to set attributes of _Tensor",
        ),
        (lambda p: _save_with_torch(p, {"w": np.ones(2)}, _use_new_zipfile_serialization=False), "legacy"),
    ],
    ids=[
        "text_file",
        "empty_file",
        "zip_without_data_pkl",
        "storage_entry_missing",
        "storage_entry_wrong_size",
        "view_past_storage_end",
        "negative_stride",
        "big_endian",
        "value_not_a_tensor",
        "not_a_mapping",
        "pickle_cut_short",
        "nested_state_dict",
        "rebuild_without_storage",
        "pickle_sets_tensor_attributes",
        "legacy_format",
    ],
)
def test_read_pth_names_what_is_wrong_with_a_malformed_file(tmp_path, make_file, message):
    path = tmp_path / "bad.pth"
    make_file(path)
    with pytest.raises(PthFormatError, match=message) as error:
        read_pth(path)
    assert str(error.value).count(str(path)) == 1  # names the file, once


def test_read_pth_reports_a_file_cut_in_half_as_truncated(tmp_path, tiny_rwkv_dir):
    data = (tiny_rwkv_dir / "tiny-rwkv-4v0-660K.pth").read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(PthFormatError, match=r"half\.pth: not a zip archive, .* truncated"):
        read_pth(tmp_path / "half.pth")


def _patch_local_header(path, entry: str, offset_in_header: int, value: bytes) -> None:
    with zipfile.ZipFile(path) as archive:
        position = archive.getinfo(entry).header_offset + offset_in_header
    with open(path, "r+b") as file:
        file.seek(position)
        file.write(value)


@pytest.mark.parametrize(
    ("header_offset", "value", "message"),
    [(28, struct.pack("<H", 0xFFFF), "runs past the end of the file"), (0, b"XXXX", "no valid local header")],
)
def test_memory_mapped_read_checks_local_headers(tmp_path, header_offset, value, message):
    write_pth(tmp_path / "w.pth", {"w": np.ones(4, np.float32)})
    _patch_local_header(tmp_path / "w.pth", "w/data/0", header_offset, value)
    with pytest.raises(PthFormatError, match=message):
        read_pth(tmp_path / "w.pth", mmap=True)


def test_read_without_mmap_checks_storage_crc(tmp_path):
    write_pth(tmp_path / "w.pth", {"w": np.ones(4, np.float32)})
    data_start = _data_offsets(tmp_path / "w.pth")["w/data/0"]
    with open(tmp_path / "w.pth", "r+b") as file:
        file.seek(data_start)
        file.write(b"\xff")
    with pytest.raises(PthFormatError, match="storage entry w/data/0 is corrupt"):
        read_pth(tmp_path / "w.pth", mmap=False)


@pytest.mark.parametrize(
    ("tensors", "error", "message"),
    [
        (
            {"ok": np.ones(2), "objects": np.array([None, 1], dtype=object)},
            ValueError,
            "objects: dtype object",
        ),
        ({"ok": np.ones(2), "u16": np.ones(2, np.uint16)}, ValueError, "u16: dtype uint16"),
        ({"ok": np.ones(2), 3: np.ones(2)}, TypeError, "keys must be str"),
    ],
)
def test_write_pth_rejects_bad_input_before_creating_any_file(tmp_path, tensors, error, message):
    with pytest.raises(error, match=message):
        write_pth(tmp_path / "out.pth", tensors)
    assert list(tmp_path.iterdir()) == []


def test_write_pth_failing_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    write_pth(tmp_path / "out.pth", {"old": np.zeros(3, np.float32)})
    old_bytes = (tmp_path / "out.pth").read_bytes()
    write_entry, calls = pth_write._write_entry, []

    def failing_write_entry(*args):
        calls.append(args)
        if len(calls) == 3:
            raise OSError("No space left on device")
        write_entry(*args)

    monkeypatch.setattr(pth_write, "_write_entry", failing_write_entry)
    with pytest.raises(OSError, match="No space left"):
        write_pth(tmp_path / "out.pth", {"new": np.ones(3, np.float32), "more": np.ones(2, np.float32)})
    assert [p.name for p in tmp_path.iterdir()] == ["out.pth"]
    assert (tmp_path / "out.pth").read_bytes() == old_bytes
