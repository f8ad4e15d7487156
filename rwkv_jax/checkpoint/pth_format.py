"""Vocabulary of PyTorch's zip checkpoint format (torch.save since torch 1.6), shared by reader and writer.

A `.pth` file is a zip archive whose entries all sit under one folder, the archive name:
    <archive>/data.pkl   pickle of the saved object; tensors refer to storages by persistent id
    <archive>/data/<key> raw bytes of one storage, little-endian, stored uncompressed at a 64-byte offset
    <archive>/byteorder  "little" or "big" (absent in files from torch < 1.12: little)
    <archive>/version    the serialization format version, "3\n" for current torch
A tensor is pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
backward_hooks)` with the storage given by the persistent id `("storage", torch.<Name>Storage, key, "cpu",
numel)`; dtypes without a typed storage class (uint16, float8, ...) use `_rebuild_tensor_v3`, whose storage
is a `torch.storage.UntypedStorage` of bytes and whose extra argument names the dtype (`torch.uint16`).
"""

import ml_dtypes
import numpy as np

STORAGE_ALIGNMENT = 64  # bytes; torch aligns every storage entry's data to this offset in the file

# Typed storage classes (module `torch`) and the element type each holds.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
}

# dtype objects (module `torch`) that `_rebuild_tensor_v3` names for dtypes without a typed storage class.
TORCH_DTYPES: dict[str, np.dtype] = {
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
}


class PthFormatError(ValueError):
    """A `.pth` file that is malformed, truncated, unsafe or uses a feature this reader does not support."""
