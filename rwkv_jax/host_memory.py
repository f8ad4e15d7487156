"""Host arrays that XLA:CPU shares instead of copying: numpy buffers starting at a 64-byte-aligned address.

On the CPU backend ``jax.device_put`` of such an array makes a jax array on the same memory (no copy, no XLA
program). Loading (:mod:`rwkv_jax.checkpoint.transfer`) and the decoder's stacks (:mod:`rwkv_jax.decoding`)
lay parameters out with numpy into these buffers: no second copy while they are built, and no XLA program
compiled per shape, whose compiler memory would add to the peak of a process that loads and decodes.

Such an array cannot be donated: XLA:CPU does not own its memory, so a jitted step that donates it writes
its outputs to fresh buffers. :func:`put_donatable` gives a training run parameters that it can donate.
"""

from typing import Any

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


def put_donatable(tree: Any, shardings: Any) -> Any:
    """``jax.device_put(tree, shardings)`` into buffers that XLA owns, so that a jitted step can donate them.

    On CPU an array loaded from a checkpoint shares numpy's memory (module docstring): the first donating
    training step would then hold the parameters twice (the inputs it cannot reuse and its outputs; measured
    in docs/speed.md, "Training"). There every leaf is copied once (a transient second copy at startup,
    before the optimiser state and activations exist). Elsewhere ``device_put`` copies host memory to the
    devices anyway and keeps what is placed already.
    """
    copy = jax.default_backend() == "cpu"
    return jax.device_put(tree, shardings, may_alias=False if copy else None)


def process_status_kib(field: str) -> int:
    """A memory field of this process from Linux's ``/proc/self/status``, KiB: ``VmRSS`` (resident),
    ``VmHWM`` (peak resident; unlike ``ru_maxrss`` not inherited over ``fork`` + ``exec``), ``RssFile``
    (resident file-backed pages)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (memory is measured on Linux only)")
