"""Host arrays that XLA:CPU shares instead of copying: numpy buffers starting at a 64-byte-aligned address.

On the CPU backend ``jax.device_put`` of such an array makes a jax array on the same memory (no copy, no XLA
program). Loading (:mod:`rwkv_jax.checkpoint.transfer`) and the decoder's stacks (:mod:`rwkv_jax.decoding`)
lay parameters out with numpy into these buffers: no second copy while they are built, and no XLA program
compiled per shape, whose compiler memory would add to the peak of a process that loads and decodes.
"""

import jax
import numpy as np

ALIGNMENT = 64  # bytes: XLA:CPU shares (does not copy) a host array that starts at such an address


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous numpy array of ``shape`` and ``dtype`` at a 64-byte-aligned address."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def shares_memory(array: jax.Array, host: np.ndarray) -> bool:
    """Whether ``array`` (a ``device_put`` of ``host``) holds ``host``'s memory rather than a copy of it."""
    return array.unsafe_buffer_pointer() == host.ctypes.data
