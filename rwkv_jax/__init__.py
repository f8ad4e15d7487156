"""rwkv_jax: the RWKV language-model family in JAX / Flax NNX.

The public API, importable from the top level:

- models: :class:`RWKV4` / :class:`RWKV4Config` (RWKV-4), :class:`RWKV6` / :class:`RWKV6Config`
  (Eagle = "5.2", Finch = "6"), :class:`RWKV7` / :class:`RWKV7Config` (Goose); one call
  ``model(tokens[B, T], state) -> (logits[B, T, V], state)``.
- the family registry: :func:`families`, :func:`get_family` (each :class:`Family` declares its config and
  model classes, official converter, presets and WKV forms), :func:`get_preset` for sizes by name.
- official checkpoints: :func:`load_official` (BlinkDL ``.pth``, version detected from the keys) and
  :func:`save_official`.
- jitted inference: calling a model runs a compiled step (cached per shape and dtype); :func:`decoder`
  gives that step as a pure function ``step(params, tokens, state, last_only=False)`` with its params.
- generation: :func:`generate` (greedy, temperature, top-k, top-p; ragged prompt batches; streaming).
- tokenizers: :class:`ByteTokenizer`, :class:`WorldTokenizer`, :class:`HFTokenizer`, :func:`get_tokenizer`.
- WKV forms: :class:`Impl` and the per-family modules in :mod:`rwkv_jax.wkv`.
"""

from rwkv_jax.checkpoint.official import load_official, save_official
from rwkv_jax.decoding import Decoder, decoder
from rwkv_jax.generation import GenerationResult, generate, sample_logits
from rwkv_jax.models.family import Family, families, get_family, register
from rwkv_jax.models.rwkv4 import RWKV4, RWKV4Config
from rwkv_jax.models.rwkv6 import RWKV6, RWKV6Config
from rwkv_jax.models.rwkv7 import RWKV7, RWKV7Config
from rwkv_jax.presets import get_preset
from rwkv_jax.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, WorldTokenizer, get_tokenizer
from rwkv_jax.wkv.impl import Impl

__all__ = [
    "RWKV4",
    "RWKV6",
    "RWKV7",
    "ByteTokenizer",
    "Decoder",
    "Family",
    "GenerationResult",
    "HFTokenizer",
    "Impl",
    "RWKV4Config",
    "RWKV6Config",
    "RWKV7Config",
    "Tokenizer",
    "WorldTokenizer",
    "decoder",
    "families",
    "generate",
    "get_family",
    "get_preset",
    "get_tokenizer",
    "load_official",
    "register",
    "sample_logits",
    "save_official",
]
__version__ = "0.1.0"
