"""Read and write ``.safetensors`` files with numpy alone: memory-mapped reads, atomic writes.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian ``N``, then ``N`` bytes of a
UTF-8 JSON header ``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``, then the data, whose tensors are C-contiguous little-endian byte ranges ``[begin, end)``
counted from the end of the header. Reading is a JSON parse and a ``np.memmap`` of the file: nothing in the
file is executed, and every size and offset is checked against the file before a tensor is handed out.
bfloat16 is read and written through ml_dtypes (numpy has no bfloat16 of its own).
"""

import itertools
import json
import math
import os
import secrets
import struct
from collections.abc import Mapping

import ml_dtypes
import numpy as np

# Names of the format's dtypes and the little-endian numpy type of each.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# The reference implementation refuses headers above 100 MB; so does this reader (before reading them).
MAX_HEADER_BYTES = 100_000_000
_LENGTH = struct.Struct("<Q")
METADATA = "__metadata__"


class SafetensorsFormatError(ValueError):
    """A ``.safetensors`` file that is malformed or truncated, or uses a dtype this reader does not know."""


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        raise SafetensorsFormatError(f"the header names {duplicated[:4]} more than once")
    return dict(pairs)


def _read_header(path: str, size: int) -> tuple[dict, int]:
    """``(header, data_start)`` of the file at ``path`` of ``size`` bytes."""
    if size < _LENGTH.size:
        raise SafetensorsFormatError(f"{path}: {size} bytes, too short for a safetensors file")
    with open(path, "rb") as file:
        (length,) = _LENGTH.unpack(file.read(_LENGTH.size))
        if length > min(MAX_HEADER_BYTES, size - _LENGTH.size):
            raise SafetensorsFormatError(
                f"{path}: header length {length} exceeds the file ({size} bytes) or {MAX_HEADER_BYTES}"
            )
        text = file.read(length)
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsFormatError(f"{path}: the header is not UTF-8 JSON ({e})") from None
    except SafetensorsFormatError as e:
        raise SafetensorsFormatError(f"{path}: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{path}: the header is {type(header).__name__}, expected an object")
    return header, _LENGTH.size + length


def _entry(path: str, name: str, info: object, data_size: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """``(dtype, shape, begin, end)`` of one header entry, checked against the data size."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsFormatError(f"{where}: expected keys dtype, shape, data_offsets, got {info!r:.120}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise SafetensorsFormatError(f"{where}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise SafetensorsFormatError(f"{where}: shape {shape!r:.80} is not a list of integers >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise SafetensorsFormatError(f"{where}: data_offsets {offsets!r:.80} is not [begin, end]")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if not 0 <= begin <= end <= data_size or end - begin != nbytes:
        raise SafetensorsFormatError(
            f"{where}: data_offsets [{begin}, {end}] do not hold {nbytes} bytes of {dtype} {shape} within "
            f"the {data_size} bytes of data"
        )
    return DTYPES[dtype], tuple(shape), begin, end


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: array}`` of the file at ``path``, in the header's order, memory-mapped (read-only views).

    Raises:
      SafetensorsFormatError: the file is malformed: a header that is not JSON or exceeds the file, an
        unknown dtype, offsets outside the data or overlapping, sizes that do not match the shapes.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    header, data_start = _read_header(path, size)
    header.pop(METADATA, None)
    entries = {name: _entry(path, name, info, size - data_start) for name, info in header.items()}
    ranges = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items() if end > begin)
    for (_, end, first), (begin, _, second) in itertools.pairwise(ranges):
        if begin < end:
            raise SafetensorsFormatError(f"{path}: tensors {first!r} and {second!r} overlap")
    if not entries:
        return {}
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start) if size > data_start else None
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        raw = data[begin:end] if data is not None else np.zeros(0, np.uint8)
        tensors[name] = raw.view(dtype).reshape(shape)
    return tensors


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header's ``__metadata__`` (str -> str) of the file at ``path``; ``{}`` when it has none."""
    path = os.fspath(path)
    header, _ = _read_header(path, os.path.getsize(path))
    metadata = header.get(METADATA, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsFormatError(f"{path}: __metadata__ must map str to str, got {metadata!r:.120}")
    return metadata


def _header_bytes(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, object] = {METADATA: dict(metadata)} if metadata else {}
    offset = 0
    for name, array in tensors.items():
        if array.dtype not in _NAMES:
            raise TypeError(f"tensor {name!r}: dtype {array.dtype} cannot be stored; use {sorted(DTYPES)}")
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape)}
        header[name]["data_offsets"] = [offset, offset + array.nbytes]
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return text + b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the reference writes it


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Writes ``{name: array}`` (numpy or jax arrays, any dtype of :data:`DTYPES`) in the given order.

    Atomic: the file is written under a temporary name in the same folder, flushed to disk, then renamed.
    ``metadata`` (str -> str) goes into the header's ``__metadata__``; transformers expects
    ``{"format": "pt"}`` there. Raises TypeError for a non-str name or an unsupported dtype, before writing.
    """
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {type(name).__name__} {name!r}")
        array = np.asarray(value)
        arrays[name] = array.astype(array.dtype.newbyteorder("<")) if array.dtype.byteorder == ">" else array
    header = _header_bytes(arrays, metadata or {})
    path = os.fspath(path)
    folder, filename = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{filename}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temporary, "xb") as file:
            file.write(_LENGTH.pack(len(header)) + header)
            for array in arrays.values():
                file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
