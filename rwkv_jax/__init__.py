"""rwkv_jax: the RWKV language-model family in JAX / Flax NNX.

Public API (see README): ``load_official``, ``save_official``, ``generate``, the model classes in
``rwkv_jax.models``, the WKV forms in ``rwkv_jax.wkv`` and the tokenizers in ``rwkv_jax.tokenizers``.
"""

from rwkv_jax.wkv.impl import Impl

__all__ = ["Impl"]
__version__ = "0.1.0"
