"""Read a PyTorch `.pth` state dict into numpy arrays without torch and without running code from the file.

The pickle in `data.pkl` is loaded by an unpickler that resolves only an allow-list of global names, each to
a function or marker of this module: `torch` is never imported and nothing named by the file is called
unless it is on the list. Storages are read straight from the zip entries (memory-mapped by default).
"""

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Callable

import numpy as np

from rwkv_jax.checkpoint.pth_format import STORAGE_DTYPES, TORCH_DTYPES, PthFormatError

# First bytes of a pre-1.6 torch.save file: a protocol-2 pickle of the magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (fields we skip), file name length, extra field length


class _Sealed:
    """Base of the objects the unpickler hands to the pickle, which may not alter them (BUILD opcode)."""

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        raise PthFormatError(f"data.pkl tries to set attributes of {type(self).__name__}")


class _StorageType(_Sealed):
    """What `torch.<Name>Storage` resolves to: the element type of the storage."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _DtypeName(_Sealed):
    """What `torch.<dtype>` resolves to (the dtype argument of `_rebuild_tensor_v3`)."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _Storage(_Sealed):
    """A loaded storage: a 1-D array of its element type (uint8 for untyped storages)."""

    __slots__ = ("data",)

    def __init__(self, data: np.ndarray):
        self.data = data


class _Tensor(_Sealed):
    """A rebuilt tensor, kept from the pickle's reach until the state dict is complete."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


def _view(storage: object, offset: object, size: object, stride: object) -> _Tensor:
    """The tensor `storage[offset:]` with `size` and `stride` (in elements); non-contiguous ones copied."""
    if not isinstance(storage, _Storage):
        raise PthFormatError(f"tensor storage must come from a persistent id, got {type(storage).__name__}")
    if not _is_index_tuple(size) or not _is_index_tuple(stride) or len(size) != len(stride):
        raise PthFormatError(
            f"tensor size {size!r} and stride {stride!r} must be tuples of ints >= 0, same length"
        )
    if not isinstance(offset, int) or offset < 0:
        raise PthFormatError(f"tensor storage offset must be an int >= 0, got {offset!r}")
    data = storage.data
    numel = math.prod(size)
    if numel == 0:
        return _Tensor(np.zeros(size, data.dtype))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= data.size:
        raise PthFormatError(
            f"tensor (offset {offset}, size {size}, stride {stride}) reads element {last} of a storage "
            f"of {data.size} elements"
        )
    contiguous = all(
        n == 1 or s == math.prod(size[i + 1 :]) for i, (n, s) in enumerate(zip(size, stride, strict=True))
    )
    if contiguous:
        return _Tensor(data[offset : offset + numel].reshape(size))
    strides = tuple(s * data.itemsize for s in stride)
    window = np.lib.stride_tricks.as_strided(data[offset:], size, strides, writeable=False)
    return _Tensor(np.ascontiguousarray(window))


def _is_index_tuple(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and v >= 0 for v in value)


def _rebuild_tensor_v2(
    storage, offset, size, stride, requires_grad, backward_hooks, metadata=None
) -> _Tensor:
    """Stand-in for `torch._utils._rebuild_tensor_v2`: a view of a typed storage."""
    return _view(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    """Stand-in for `torch._utils._rebuild_tensor_v3`: a view of an untyped (byte) storage as `dtype`."""
    if not isinstance(storage, _Storage) or not isinstance(dtype, _DtypeName):
        raise PthFormatError("_rebuild_tensor_v3 needs an untyped storage and a torch dtype")
    if storage.data.nbytes % dtype.dtype.itemsize:
        raise PthFormatError(
            f"a storage of {storage.data.nbytes} bytes does not hold whole {dtype.dtype} values"
        )
    return _view(_Storage(storage.data.view(dtype.dtype)), offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None) -> _Tensor:
    """Stand-in for `torch._utils._rebuild_parameter(_with_state)`: an nn.Parameter is its tensor."""
    if not isinstance(data, _Tensor):
        raise PthFormatError(f"nn.Parameter must wrap a tensor, got {type(data).__name__}")
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "UntypedStorage"): _StorageType(np.dtype(np.uint8)),
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
    **{("torch", name): _DtypeName(dtype) for name, dtype in TORCH_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED_GLOBALS`; storages come from `load_storage(key, dtype, numel)`."""

    def __init__(self, data: bytes, load_storage: Callable[[str, np.dtype, int], np.ndarray]):
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise PthFormatError(
                f"data.pkl refers to the forbidden global {module}.{name}; only torch tensors, storages and "
                "OrderedDict are allowed (this reader never runs code from a checkpoint)"
            ) from None

    def persistent_load(self, pid: object) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise PthFormatError(
                f"unknown persistent id {pid!r}; expected ('storage', type, key, location, numel)"
            )
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise PthFormatError(f"malformed storage reference {pid!r}")
        if not isinstance(numel, int) or numel < 0:
            raise PthFormatError(f"storage {key!r} has an invalid element count {numel!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(self._load_storage(key, storage_type.dtype, numel))
        storage = self._storages[key]
        if storage.data.dtype != storage_type.dtype or storage.data.size != numel:
            raise PthFormatError(f"storage {key!r} is referenced with two different types or sizes")
        return storage


def _open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head == _LEGACY_MAGIC:
        raise PthFormatError(
            f"{path}: legacy (pre-1.6) torch.save format is not supported; re-save with torch>=1.6"
        )
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise PthFormatError(
            f"{path}: not a zip archive, so not a torch.save file or truncated ({e})"
        ) from None


def _archive_prefix(path: str | os.PathLike, archive: zipfile.ZipFile) -> str:
    """The `<archive>/` folder holding data.pkl."""
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise PthFormatError(
            f"{path}: expected exactly one <archive>/data.pkl entry in the zip, found {len(pickles)}: "
            "not a torch.save file"
        )
    return pickles[0][: -len("data.pkl")]


def _check_byteorder(path: str | os.PathLike, archive: zipfile.ZipFile, prefix: str) -> None:
    name = prefix + "byteorder"
    byteorder = archive.read(name) if name in archive.namelist() else b"little"  # torch < 1.12: no record
    if byteorder != b"little":
        raise PthFormatError(
            f"{path}: byteorder record is {byteorder!r}; only little-endian files are supported"
        )


def _entry_data_offset(mapped: np.ndarray, info: zipfile.ZipInfo) -> int:
    """Where the bytes of a stored (uncompressed) entry start in the file: after its local header."""
    header = mapped[info.header_offset : info.header_offset + _LOCAL_HEADER.size].tobytes()
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise PthFormatError(f"zip entry {info.filename} has no valid local header (file truncated?)")
    _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


class _StorageReader:
    """Loads `<archive>/data/<key>` entries as 1-D arrays, from a copy-on-write memory map or by reading."""

    def __init__(self, path: str | os.PathLike, archive: zipfile.ZipFile, prefix: str, mmap: bool):
        self._archive, self._prefix = archive, prefix
        self._mapped = np.memmap(path, np.uint8, mode="c").view(np.ndarray) if mmap else None

    def __call__(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        name = f"{self._prefix}data/{key}"
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            raise PthFormatError(f"storage entry {name} is missing from the zip") from None
        nbytes = numel * dtype.itemsize
        if info.file_size != nbytes:
            raise PthFormatError(
                f"storage entry {name} holds {info.file_size} bytes, expected {nbytes} ({numel} x {dtype})"
            )
        if self._mapped is not None and info.compress_type == zipfile.ZIP_STORED:
            start = _entry_data_offset(self._mapped, info)
            if start + nbytes > self._mapped.size:
                raise PthFormatError(f"storage entry {name} runs past the end of the file (truncated)")
            return self._mapped[start : start + nbytes].view(dtype)
        buffer = bytearray(nbytes)
        try:
            with self._archive.open(info) as entry:
                count = entry.readinto(buffer)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise PthFormatError(f"storage entry {name} is corrupt or truncated ({e})") from None
        if count != nbytes:
            raise PthFormatError(f"storage entry {name} is truncated ({count} of {nbytes} bytes)")
        return np.frombuffer(buffer, dtype)


def _as_tensor_dict(path: str | os.PathLike, obj: object) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise PthFormatError(
            f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj)}"
        )
    tensors = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, _Tensor):
            raise PthFormatError(
                f"{path}: expected a flat state dict of str -> tensor, but entry {key!r} holds "
                f"{type(value).__name__}"
            )
        tensors[key] = value.array
    return tensors


def read_pth(path: str | os.PathLike, *, mmap: bool = True) -> dict[str, np.ndarray]:
    """Load a torch.save'd state dict as `{name: array}` in the file's key order, without importing torch.

    float16 and bfloat16 stay np.float16 / ml_dtypes.bfloat16. With `mmap` (the default) contiguous tensors
    are copy-on-write views of a memory map of the file (no read until used; writes never reach the file);
    otherwise every storage is read into memory (and its CRC checked). Non-contiguous tensors are copied
    into contiguous arrays; tensors that share a storage share memory. Mapped arrays keep reading the file:
    replacing it by rename (write_pth does) is safe, overwriting it in place while they live is not.

    Raises PthFormatError for anything but a flat mapping of str -> tensor, for globals other than
    OrderedDict, torch's tensor/parameter rebuild functions, storage classes and dtypes (before running any
    of them), for big-endian, legacy (pre-1.6), truncated or corrupt files.
    """
    with _open_zip(path) as archive:
        prefix = _archive_prefix(path, archive)
        _check_byteorder(path, archive, prefix)
        try:
            pickled = archive.read(prefix + "data.pkl")
            obj = _RestrictedUnpickler(pickled, _StorageReader(path, archive, prefix, mmap)).load()
        except PthFormatError as e:
            raise PthFormatError(f"{path}: {e}") from None
        except (
            pickle.UnpicklingError,
            EOFError,
            zipfile.BadZipFile,
            TypeError,
            ValueError,
            IndexError,
            AttributeError,
        ) as e:
            raise PthFormatError(f"{path}: data.pkl is corrupt ({type(e).__name__}: {e})") from None
    return _as_tensor_dict(path, obj)
