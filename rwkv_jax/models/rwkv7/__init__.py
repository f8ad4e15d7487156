"""RWKV-7 "Goose" (arXiv 2503.14456; BlinkDL x070): model, official initialisation, checkpoint layout."""

from rwkv_jax.models.family import Family
from rwkv_jax.models.rwkv7 import convert
from rwkv_jax.models.rwkv7.model import RWKV7, RWKV7Config
from rwkv_jax.models.rwkv7.presets import PRESETS
from rwkv_jax.wkv.v7 import WKV7_FORMS
from rwkv_jax.wkv.v7_numerics import WKV7_NUMERICS

FAMILY = Family(
    name="rwkv7",
    title="RWKV-7 Goose",
    config_class=RWKV7Config,
    model_class=RWKV7,
    converter=convert,
    presets=PRESETS,
    wkv=WKV7_FORMS,
    numerics=WKV7_NUMERICS,
)

__all__ = ["FAMILY", "RWKV7", "RWKV7Config"]
