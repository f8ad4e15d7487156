"""RWKV-4 (arXiv 2305.13048): model, official initialisation, checkpoint layout, sizes."""

from rwkv_jax.models.family import Family
from rwkv_jax.models.rwkv4 import convert
from rwkv_jax.models.rwkv4.model import RWKV4, RWKV4Config
from rwkv_jax.models.rwkv4.presets import PRESETS
from rwkv_jax.wkv.v4 import WKV4_FORMS
from rwkv_jax.wkv.v4_numerics import WKV4_NUMERICS

FAMILY = Family(
    name="rwkv4",
    title="RWKV-4",
    config_class=RWKV4Config,
    model_class=RWKV4,
    converter=convert,
    presets=PRESETS,
    wkv=WKV4_FORMS,
    numerics=WKV4_NUMERICS,
)

__all__ = ["FAMILY", "RWKV4", "RWKV4Config"]
