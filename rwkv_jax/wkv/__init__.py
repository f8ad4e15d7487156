"""Pure-JAX WKV recurrences: one module per family, all forms of a family share one signature."""

from rwkv_jax.wkv.impl import Impl, resolve

__all__ = ["Impl", "resolve"]
