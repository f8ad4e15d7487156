"""Write numpy arrays as a PyTorch `.pth` state dict that `torch.load` (also `weights_only=True`) reads.

The pickle is assembled from opcodes, so the file names torch's globals without this code importing torch:
    OrderedDict([(name, _rebuild_tensor_v2(<storage>, 0, size, stride, False, OrderedDict())), ...])
with `<storage>` the persistent id ("storage", torch.<Name>Storage, "<index>", "cpu", numel).
"""

import math
import os
import pickle
import secrets
import struct
import zipfile
from collections.abc import Mapping
from typing import BinaryIO

import numpy as np
from numpy.typing import ArrayLike

from rwkv_jax.checkpoint.pth_format import STORAGE_ALIGNMENT, STORAGE_DTYPES

_Layout = tuple[np.dtype, tuple[int, ...]]  # how one tensor is saved: little-endian dtype, shape
_STORAGE_NAMES = {dtype: name for name, dtype in STORAGE_DTYPES.items()}
_SERIALIZATION_VERSION = b"3\n"  # the `version` record of current torch.save files
_PADDING_FIELD_ID = 0x4246  # "FB": the zip extra-field id torch's writer pads local headers with
_LOCAL_HEADER_BYTES = 30
_ZIP64_EXTRA_BYTES = 20  # zipfile adds this record to a local header written with force_zip64
# Entries above this size get zip64 headers (zipfile itself switches at ~2 GB; forcing it earlier keeps the
# header size, hence the alignment padding, known before writing).
_ZIP64_ENTRY_BYTES = 1 << 30


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii")


def _str(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded


def _int(value: int) -> bytes:
    if 0 <= value < 1 << 8:
        return pickle.BININT1 + struct.pack("<B", value)
    if 0 <= value < 1 << 16:
        return pickle.BININT2 + struct.pack("<H", value)
    if -(1 << 31) <= value < 1 << 31:
        return pickle.BININT + struct.pack("<i", value)
    encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + struct.pack("<B", len(encoded)) + encoded


def _int_tuple(values: tuple[int, ...]) -> bytes:
    return pickle.MARK + b"".join(_int(v) for v in values) + pickle.TUPLE


_EMPTY_ORDERED_DICT = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE


def _tensor_pickle(storage_key: str, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """Pickle opcodes of one C-contiguous tensor that is all of storage `storage_key`."""
    storage_id = (
        pickle.MARK
        + _str("storage")
        + _global("torch", _STORAGE_NAMES[dtype])
        + _str(storage_key)
        + _str("cpu")
        + _int(math.prod(shape))
        + pickle.TUPLE
    )
    strides = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))  # C order, in elements
    arguments = (
        pickle.MARK
        + storage_id
        + pickle.BINPERSID
        + _int(0)
        + _int_tuple(shape)
        + _int_tuple(strides)
        + pickle.NEWFALSE
        + _EMPTY_ORDERED_DICT
        + pickle.TUPLE
    )
    return _global("torch._utils", "_rebuild_tensor_v2") + arguments + pickle.REDUCE


def _state_dict_pickle(layouts: Mapping[str, _Layout]) -> bytes:
    """Protocol-2 pickle of an OrderedDict of tensors {key: (dtype, shape)}; tensor i is storage "i"."""
    items = b"".join(
        _str(key) + _tensor_pickle(str(i), dtype, shape)
        for i, (key, (dtype, shape)) in enumerate(layouts.items())
    )
    body = _EMPTY_ORDERED_DICT + pickle.MARK + items + pickle.SETITEMS
    return pickle.PROTO + bytes([2]) + body + pickle.STOP


def _layout(key: object, value: ArrayLike) -> _Layout:
    """The little-endian dtype and the shape `value` is saved with; raises for what torch cannot hold.

    Reads only metadata, so arrays on an accelerator (jax) are not copied to the host here.
    """
    if not isinstance(key, str):
        raise TypeError(f"state dict keys must be str, got {key!r}")
    dtype = np.dtype(value.dtype) if hasattr(value, "dtype") else np.asarray(value).dtype
    dtype = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    if dtype not in _STORAGE_NAMES:
        supported = ", ".join(map(str, _STORAGE_NAMES))
        raise ValueError(f"{key}: dtype {dtype} cannot be saved as a torch tensor; supported: {supported}")
    return dtype, tuple(int(n) for n in np.shape(value))


def _padded_info(name: str, offset: int, nbytes: int) -> tuple[zipfile.ZipInfo, bool]:
    """A stored-entry header for `name` at file `offset` padded so its data starts on STORAGE_ALIGNMENT."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = nbytes
    zip64 = nbytes > _ZIP64_ENTRY_BYTES
    header = _LOCAL_HEADER_BYTES + len(name.encode("utf-8")) + (_ZIP64_EXTRA_BYTES if zip64 else 0) + 4
    padding = -(offset + header) % STORAGE_ALIGNMENT
    info.extra = struct.pack("<HH", _PADDING_FIELD_ID, padding) + b"Z" * padding
    return info, zip64


def _write_entry(archive: zipfile.ZipFile, file: BinaryIO, name: str, data: bytes | memoryview) -> None:
    info, zip64 = _padded_info(name, file.tell(), len(data))
    with archive.open(info, "w", force_zip64=zip64) as entry:
        entry.write(data)


def _write_zip(
    file: BinaryIO, archive_name: str, tensors: Mapping[str, ArrayLike], layouts: dict[str, _Layout]
) -> None:
    """The zip of torch.save; each tensor is converted to its C-contiguous little-endian bytes in turn."""
    with zipfile.ZipFile(file, "w") as archive:
        _write_entry(archive, file, f"{archive_name}/data.pkl", _state_dict_pickle(layouts))
        _write_entry(archive, file, f"{archive_name}/byteorder", b"little")
        for i, (key, (dtype, _)) in enumerate(layouts.items()):
            array = np.asarray(tensors[key], dtype=dtype, order="C")
            _write_entry(
                archive, file, f"{archive_name}/data/{i}", memoryview(array.reshape(-1).view(np.uint8))
            )
        _write_entry(archive, file, f"{archive_name}/version", _SERIALIZATION_VERSION)


def write_pth(path: str | os.PathLike, tensors: Mapping[str, ArrayLike]) -> None:
    """Save `{name: array}` as torch.save would save an OrderedDict of CPU tensors, atomically.

    dtypes: float64/32/16, bfloat16 (ml_dtypes), int64/32/16/8, uint8, bool, complex64/128. Arrays are
    written C-contiguous and little-endian, one storage each, in the zip layout of torch.save (entries
    stored uncompressed, data aligned to 64 bytes, archive folder = the file's stem). The file appears
    complete or not at all: it is written under a temporary name in the same folder, then renamed.
    Values may be anything np.asarray accepts (jax arrays included); each is converted only when its bytes
    are written, so a model's worth of transposed or device arrays is never copied all at once.
    Raises TypeError / ValueError for a non-str key or an unsupported dtype before writing anything.
    """
    layouts = {key: _layout(key, value) for key, value in tensors.items()}
    path = os.fspath(path)
    folder, filename = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{filename}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temporary, "xb") as file:
            _write_zip(file, os.path.splitext(filename)[0], tensors, layouts)
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the new name points at it
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
