"""The built-in model families, one line each (a new family: a folder under ``rwkv_jax/models/`` and a line
here; see ``docs/adding_a_family.md``). ``replace=True``: a reload of this module re-registers the same
records."""

from rwkv_jax.models import rwkv4, rwkv6, rwkv7
from rwkv_jax.models.family import register

register(rwkv4.FAMILY, replace=True)
register(rwkv6.FAMILY, replace=True)
register(rwkv7.FAMILY, replace=True)
