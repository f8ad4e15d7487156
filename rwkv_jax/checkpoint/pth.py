"""PyTorch `.pth` state dicts as numpy arrays, read and written without torch (layout: see pth_format)."""

from rwkv_jax.checkpoint.pth_format import PthFormatError
from rwkv_jax.checkpoint.pth_read import read_pth
from rwkv_jax.checkpoint.pth_write import write_pth

__all__ = ["PthFormatError", "read_pth", "write_pth"]
