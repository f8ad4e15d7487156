"""Read a PyTorch `.pth` state dict into numpy arrays without torch and without running code from the file.

The pickle in `data.pkl` is loaded by an unpickler that resolves only an allow-list of global names, each to
a function or marker of this module: `torch` is never imported and nothing named by the file is called
unless it is on the list. Storages are read straight from the zip entries (memory-mapped by default).

The file is untrusted input, so every size it declares is checked against the file before anything is
allocated, and the unpickler is Python's pure-Python one with a few opcodes restricted (see
`_RestrictedUnpickler`): the C unpickler grows its memo table to any index a 5-byte opcode names (1 GB from
a 30-byte file), and dict or set keys chosen to collide in their hash make unpickling quadratic in the file's
size. Whatever the bytes, reading either returns, or raises PthFormatError naming the file.
"""

import collections
import io
import math
import os
import pickle
import pickletools
import reprlib
import struct
import zipfile
import zlib
from collections.abc import Callable

import numpy as np

from rwkv_jax.checkpoint.pth_format import STORAGE_DTYPES, TORCH_DTYPES, PthFormatError

# First bytes of a pre-1.6 torch.save file: a protocol-2 pickle of the magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (fields we skip), file name length, extra field length
# A deflated entry may inflate to at most this many times its compressed size. Weights and pickles deflate
# 1-10x; far more means long runs of one byte, the stuff of zip bombs (torch.save never compresses).
MAX_INFLATION = 32
# Non-contiguous tensors are copied; all copies together may take at most this many times the file's size
# (a view with stride 0, as torch's expand makes, can otherwise describe any amount of memory).
MAX_COPY_FACTOR = 4
# numpy's limits on an array: dimensions and elements per dimension.
_MAX_NDIM, _MAX_DIM = 64, 2**63 - 1
# Values taken from the pickle appear in error messages at most this long (and never deeply recursed).
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxlist, _REPR.maxdict = 3, 8, 8, 4
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 80, 40, 80
_describe = _REPR.repr


def _clip(text: str) -> str:
    """`text` cut to at most about 120 characters for an error message (names come from the file)."""
    return text if len(text) <= 120 else f"{text[:80]}...{text[-30:]}"


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
    """A rebuilt tensor, kept from the pickle's reach until the state dict is complete.

    `array` is a view of the storage; `needs_copy` marks a strided (non-contiguous) view, copied into a
    contiguous array only once the copies are known to fit in the budget (see `_as_tensor_dict`).
    """

    __slots__ = ("array", "needs_copy")

    def __init__(self, array: np.ndarray, needs_copy: bool = False):
        self.array, self.needs_copy = array, needs_copy


def _view(storage: object, offset: object, size: object, stride: object) -> _Tensor:
    """The tensor `storage[offset:]` with `size` and `stride` (in elements); strided ones marked to copy."""
    if not isinstance(storage, _Storage):
        raise PthFormatError(f"tensor storage must come from a persistent id, got {type(storage).__name__}")
    if not _is_index_tuple(size) or not _is_index_tuple(stride) or len(size) != len(stride):
        raise PthFormatError(
            f"tensor size {_describe(size)} and stride {_describe(stride)} must be tuples of ints >= 0 "
            f"(below 2**63), same length"
        )
    if len(size) > _MAX_NDIM:
        raise PthFormatError(f"tensor has {len(size)} dimensions, at most {_MAX_NDIM} are supported")
    if not isinstance(offset, int) or not 0 <= offset <= _MAX_DIM:
        raise PthFormatError(f"tensor storage offset must be an int in [0, 2**63), got {_describe(offset)}")
    data = storage.data
    numel = math.prod(size)
    if numel == 0:
        return _Tensor(np.zeros(size, data.dtype))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= data.size:
        raise PthFormatError(
            f"tensor (offset {offset}, size {_describe(size)}, stride {_describe(stride)}) reads element "
            f"{_describe(last)} of a storage of {data.size} elements"
        )
    contiguous = all(
        n == 1 or s == math.prod(size[i + 1 :]) for i, (n, s) in enumerate(zip(size, stride, strict=True))
    )
    if contiguous:
        return _Tensor(data[offset : offset + numel].reshape(size))
    strides = tuple(s * data.itemsize for s in stride)
    window = np.lib.stride_tricks.as_strided(data[offset:], size, strides, writeable=False)
    return _Tensor(window, needs_copy=True)


def _is_index_tuple(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and 0 <= v <= _MAX_DIM for v in value)


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


def _ordered_dict(items: object = ()) -> collections.OrderedDict:
    """Stand-in for `collections.OrderedDict`: made empty (then SETITEMS), or from (str, value) pairs."""
    pairs = list(items) if isinstance(items, list | tuple) else None
    if pairs is None or not all(
        isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in pairs
    ):
        raise PthFormatError(
            f"OrderedDict({_describe(items)}): expected no argument or a list of (str, value) pairs"
        )
    return collections.OrderedDict(pairs)


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "UntypedStorage"): _StorageType(np.dtype(np.uint8)),
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
    **{("torch", name): _DtypeName(dtype) for name, dtype in TORCH_DTYPES.items()},
}


_OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}
# Opcodes no torch.save file needs that would widen what a file can do: build objects other than by the
# allowed callables (INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT*), hash keys of the file's choosing (sets), or take
# out-of-band buffers.
_FORBIDDEN_OPCODES = frozenset(
    op.code.encode("latin-1")[0]
    for op in pickletools.opcodes
    if op.name in {"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "EMPTY_SET", "ADDITEMS",
                   "FROZENSET", "NEXT_BUFFER", "READONLY_BUFFER"}
)  # fmt: skip
# The largest memo index LONG_BINPUT can name; PUT's decimal index is held to the same range.
_MAX_MEMO_INDEX = 2**32 - 1


class _Dispatch(dict):
    """The unpickler's opcode table; an opcode not in it raises PthFormatError naming it."""

    def __missing__(self, code: int):
        if code in _OPCODE_NAMES:
            raise PthFormatError(
                f"data.pkl uses the pickle opcode {_OPCODE_NAMES[code]}, which is not allowed"
            )
        raise PthFormatError(f"data.pkl holds the unknown pickle opcode 0x{code:02x}")


def _require_str_keys(keys: list) -> None:
    """Dict keys must be str: their hashes are randomised, so no file can make them all collide."""
    for key in keys:
        if not isinstance(key, str):
            raise PthFormatError(
                f"data.pkl builds a dict with the key {_describe(key)}; only str keys are allowed"
            )


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves only `_ALLOWED_GLOBALS`; storages come from `load_storage(key, dtype, numel)`.

    Python's pure-Python unpickler (its memo is a dict, so no index makes it allocate), with opcodes
    restricted: those in _FORBIDDEN_OPCODES and unknown ones raise, memo indices stay below 2**32, dict keys
    must be str, and BUILD (which sets an object's attributes) is accepted only on an OrderedDict, whose
    attributes (torch's `_metadata`) are dropped.
    """

    dispatch = _Dispatch(
        (code, load) for code, load in pickle._Unpickler.dispatch.items() if code not in _FORBIDDEN_OPCODES
    )

    def __init__(self, data: bytes, load_storage: Callable[[str, np.dtype, int], np.ndarray]):
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            detail = ""
            if module == "torch":
                known = sorted(n for m, n in _ALLOWED_GLOBALS if m == "torch")
                detail = f" (not a storage class or dtype this reader knows: {', '.join(known)})"
            raise PthFormatError(
                f"data.pkl refers to the forbidden global {_clip(str(module))}.{_clip(str(name))}"
                f"{detail}; only torch tensors, storages and OrderedDict are allowed (this reader never runs "
                "code from a checkpoint)"
            ) from None

    def persistent_load(self, pid: object) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise PthFormatError(
                f"unknown persistent id {_describe(pid)}; expected ('storage', type, key, location, numel)"
            )
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise PthFormatError(f"malformed storage reference {_describe(pid)}")
        if not isinstance(numel, int) or numel < 0:
            raise PthFormatError(f"storage {_describe(key)} has an invalid element count {_describe(numel)}")
        if key not in self._storages:
            self._storages[key] = _Storage(self._load_storage(key, storage_type.dtype, numel))
        storage = self._storages[key]
        if storage.data.dtype != storage_type.dtype or storage.data.size != numel:
            raise PthFormatError(f"storage {_describe(key)} is referenced with two different types or sizes")
        return storage

    def _memo_index(self, index: int) -> int:
        if not 0 <= index <= _MAX_MEMO_INDEX:
            raise PthFormatError(
                f"data.pkl stores a memo entry at index {_describe(index)}, beyond 2**32 - 1"
            )
        return index

    def load_put(self) -> None:
        self.memo[self._memo_index(int(self.readline()[:-1]))] = self.stack[-1]

    def load_setitem(self) -> None:
        _require_str_keys(self.stack[-2:-1])  # stack: ..., dict, key, value
        super().load_setitem()

    def load_setitems(self) -> None:
        _require_str_keys(self.stack[0::2])  # the stack since MARK: key, value, key, value, ...
        super().load_setitems()

    def load_dict(self) -> None:
        _require_str_keys(self.stack[0::2])
        super().load_dict()

    def load_build(self) -> None:
        state, target = self.stack.pop(), self.stack[-1]
        if isinstance(target, _Sealed):
            raise PthFormatError(f"data.pkl tries to set attributes of {type(target).__name__}")
        if not isinstance(target, collections.OrderedDict) or not isinstance(state, dict | None):
            raise PthFormatError(
                f"data.pkl sets the state of a {type(target).__name__} to {type(state).__name__}; only an "
                "OrderedDict's attribute dict is accepted"
            )

    dispatch[pickle.PUT[0]] = load_put
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.BUILD[0]] = load_build


def _open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head == _LEGACY_MAGIC:
        raise PthFormatError(
            f"{path}: legacy (pre-1.6) torch.save format is not supported; re-save with torch>=1.6"
        )
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error, NotImplementedError) as e:
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


def _check_entry(info: zipfile.ZipInfo, file_size: int) -> None:
    """Refuses an entry whose declared sizes the file cannot back, before anything is allocated for it.

    A stored entry's bytes must lie inside the file; a deflated one may inflate at most MAX_INFLATION-fold.
    """
    name = info.filename
    if info.flag_bits & 0x1:
        raise PthFormatError(f"zip entry {name} is encrypted; torch.save files never are")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise PthFormatError(
            f"zip entry {name} uses compression method {info.compress_type}; expected 0 (stored) or 8 "
            "(deflated)"
        )
    if info.header_offset + info.compress_size > file_size:
        raise PthFormatError(
            f"zip entry {name} declares {info.compress_size} bytes at offset {info.header_offset}, past the "
            f"end of the {file_size}-byte file (truncated or corrupt)"
        )
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise PthFormatError(
            f"stored zip entry {name} declares {info.file_size} bytes but holds {info.compress_size}"
        )
    if info.file_size > MAX_INFLATION * info.compress_size:
        raise PthFormatError(
            f"zip entry {name} would inflate from {info.compress_size} to {info.file_size} bytes, more than "
            f"{MAX_INFLATION}x (refused as a possible zip bomb; torch.save stores entries uncompressed)"
        )


def _read_entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, into: bytearray, what: str = "zip entry"
) -> int:
    """Reads an entry passed by `_check_entry` into `into` (its declared size); the bytes read.

    `what` names the entry in errors ("storage entry", "zip entry").
    """
    try:
        with archive.open(info) as entry:
            return entry.readinto(into)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError, NotImplementedError) as e:
        raise PthFormatError(f"{what} {info.filename} is corrupt or truncated ({e})") from None


def _read_small_entry(archive: zipfile.ZipFile, name: str, file_size: int) -> bytes:
    """The bytes of entry `name` (data.pkl, byteorder), checked like a storage."""
    info = archive.getinfo(name)
    _check_entry(info, file_size)
    buffer = bytearray(info.file_size)
    count = _read_entry(archive, info, buffer)
    if count != info.file_size:
        raise PthFormatError(f"zip entry {name} is truncated ({count} of {info.file_size} bytes)")
    return bytes(buffer)


def _check_byteorder(archive: zipfile.ZipFile, prefix: str, file_size: int) -> None:
    name = prefix + "byteorder"
    # torch < 1.12 wrote no byteorder record: little-endian.
    byteorder = _read_small_entry(archive, name, file_size) if name in archive.namelist() else b"little"
    if byteorder != b"little":
        raise PthFormatError(
            f"byteorder record is {_describe(byteorder)}; only little-endian files are supported"
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
        self._file_size = os.path.getsize(path)
        self._mapped = np.memmap(path, np.uint8, mode="c").view(np.ndarray) if mmap else None

    def __call__(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        name = f"{self._prefix}data/{key}"
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            raise PthFormatError(f"storage entry {_clip(name)} is missing from the zip") from None
        nbytes = numel * dtype.itemsize
        if info.file_size != nbytes:
            raise PthFormatError(
                f"storage entry {name} holds {info.file_size} bytes, expected {nbytes} ({numel} x {dtype})"
            )
        _check_entry(info, self._file_size)
        if self._mapped is not None and info.compress_type == zipfile.ZIP_STORED:
            start = _entry_data_offset(self._mapped, info)
            if start + nbytes > self._mapped.size:
                raise PthFormatError(f"storage entry {name} runs past the end of the file (truncated)")
            return self._mapped[start : start + nbytes].view(dtype)
        buffer = bytearray(nbytes)
        count = _read_entry(self._archive, info, buffer, "storage entry")
        if count != nbytes:
            raise PthFormatError(f"storage entry {name} is truncated ({count} of {nbytes} bytes)")
        return np.frombuffer(buffer, dtype)


def _as_tensor_dict(path: str | os.PathLike, obj: object, copy_budget: int) -> dict[str, np.ndarray]:
    """`obj` as {name: array}; non-contiguous tensors copied, at most `copy_budget` bytes of copies in all."""
    if not isinstance(obj, dict):
        raise PthFormatError(
            f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj)}"
        )
    tensors, copied = {}, 0
    for key, value in dict.items(obj):
        if not isinstance(key, str) or not isinstance(value, _Tensor):
            raise PthFormatError(
                f"{path}: expected a flat state dict of str -> tensor, but entry {_describe(key)} holds "
                f"{type(value).__name__}"
            )
        if value.needs_copy:
            copied += value.array.nbytes
            if copied > copy_budget:
                raise PthFormatError(
                    f"{path}: copying the non-contiguous tensors up to {_describe(key)} takes {copied} "
                    f"bytes, more than {MAX_COPY_FACTOR}x the file's size ({copy_budget} bytes allowed): a "
                    "view with stride 0 or overlapping strides repeats storage elements"
                )
            value.array, value.needs_copy = np.ascontiguousarray(value.array), False
        tensors[key] = value.array
    return tensors


# What a malformed data.pkl can raise from inside the unpickler, besides PthFormatError.
_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    TypeError,
    ValueError,
    IndexError,
    KeyError,
    AttributeError,
    struct.error,
    OverflowError,
    RecursionError,
)


def read_pth(path: str | os.PathLike, *, mmap: bool = True) -> dict[str, np.ndarray]:
    """Load a torch.save'd state dict as `{name: array}` in the file's key order, without importing torch.

    float16 and bfloat16 stay np.float16 / ml_dtypes.bfloat16. With `mmap` (the default) contiguous tensors
    are copy-on-write views of a memory map of the file (no read until used; writes never reach the file);
    otherwise every storage is read into memory (and its CRC checked). Non-contiguous tensors are copied
    into contiguous arrays (at most MAX_COPY_FACTOR times the file's size in all); tensors that share a
    storage share memory. Mapped arrays keep reading the file: replacing it by rename (write_pth does) is
    safe, overwriting it in place while they live is not.

    Raises PthFormatError, naming the file, for anything but a flat mapping of str -> tensor, for globals
    other than OrderedDict, torch's tensor/parameter rebuild functions, storage classes and dtypes (before
    running any of them), for pickle opcodes outside the restricted set, for big-endian, legacy (pre-1.6),
    truncated, corrupt or encrypted files and for sizes the file cannot back (a deflated entry may inflate
    MAX_INFLATION-fold at most).
    """
    file_size = os.path.getsize(path)
    with _open_zip(path) as archive:
        try:
            prefix = _archive_prefix(path, archive)
            _check_byteorder(archive, prefix, file_size)
            pickled = _read_small_entry(archive, prefix + "data.pkl", file_size)
            obj = _RestrictedUnpickler(pickled, _StorageReader(path, archive, prefix, mmap)).load()
        except PthFormatError as e:
            message = str(e)
            raise PthFormatError(
                message if message.startswith(f"{path}: ") else f"{path}: {message}"
            ) from None
        except _PICKLE_ERRORS as e:
            raise PthFormatError(
                f"{path}: data.pkl is corrupt ({type(e).__name__}: {_describe(str(e))[1:-1]})"
            ) from None
    return _as_tensor_dict(path, obj, MAX_COPY_FACTOR * file_size)
