"""Eagle (RWKV-5.x) and Finch (RWKV-6) (arXiv 2404.05892): one model whose ``version`` picks the layout."""

from rwkv_jax.models.family import Family
from rwkv_jax.models.rwkv6 import convert
from rwkv_jax.models.rwkv6.model import RWKV6, RWKV6Config
from rwkv_jax.models.rwkv6.presets import PRESETS
from rwkv_jax.wkv.v6 import WKV6_FORMS
from rwkv_jax.wkv.v6_numerics import WKV6_NUMERICS

FAMILY = Family(
    name="rwkv6",
    title="Eagle / Finch (RWKV-5 / 6)",
    config_class=RWKV6Config,
    model_class=RWKV6,
    converter=convert,
    presets=PRESETS,
    wkv=WKV6_FORMS,
    numerics=WKV6_NUMERICS,
)

__all__ = ["FAMILY", "RWKV6", "RWKV6Config"]
