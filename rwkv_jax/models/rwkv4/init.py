"""The official RWKV-4 initialisation (BlinkDL/RWKV-LM, ``RWKV-v4neo/src/model.py``).

Two parts of that file set the initial values:

- ``RWKV_TimeMix.__init__`` / ``RWKV_ChannelMix.__init__`` ("fancy init"): layer-dependent ``time_decay``,
  ``time_first`` and ``time_mix_*`` vectors (:func:`time_decay`, :func:`time_first`, :func:`time_mix`).
- ``RWKV.generate_init_weight``: every matrix. Embedding uniform in ``[-s, s]``; matrices zero or orthogonal
  with ``gain = sqrt(out / in)`` when ``out > in`` (torch weight ``[out, in]``) times a per-name scale
  (:func:`orthogonal_kernel`, :data:`ZERO_INIT`).

The vectors are computed in float64 and rounded to float32, as the torch code does when it writes Python
floats into a float32 tensor.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.array_typing import Array, PRNGKey

# generate_init_weight draws emb.weight from uniform(-lr_init, lr_init); 1e-4 is the value RWKV-LM's later
# trainers hard-code for it.
EMBEDDING_INIT_SCALE = 1e-4

# generate_init_weight sets scale = 0 (zeros) for these matrices: att.key, att.receptance, att.output,
# ffn.value, ffn.receptance. The others (att.value, ffn.key, head) are orthogonal.
ZERO_INIT = frozenset({"att.key", "att.receptance", "att.output", "ffn.value", "ffn.receptance"})

# generate_init_weight: scale 0.5 for head.weight, 1.0 for every other orthogonal matrix.
HEAD_INIT_SCALE = 0.5


def layer_ratios(layer_id: int, n_layer: int) -> tuple[float, float]:
    """``(ratio_0_to_1, ratio_1_to_almost0)`` of RWKV_TimeMix.__init__.

    ``ratio_0_to_1 = layer_id / (n_layer - 1)``; the torch code divides by zero for a single layer, where we
    use 0 (the value of its first layer).
    """
    ratio_0_to_1 = layer_id / (n_layer - 1) if n_layer > 1 else 0.0
    ratio_1_to_almost0 = 1.0 - layer_id / n_layer
    return ratio_0_to_1, ratio_1_to_almost0


def time_decay(layer_id: int, n_layer: int, dim: int) -> np.ndarray:
    """RWKV_TimeMix's ``decay_speed``: ``-5 + 8 (h / (dim - 1))^(0.7 + 1.3 ratio_0_to_1)``, float32 ``[dim]``.

    This is the raw parameter; the per-step decay is ``exp(-exp(time_decay))``.
    """
    ratio_0_to_1, _ = layer_ratios(layer_id, n_layer)
    position = np.arange(dim, dtype=np.float64) / max(dim - 1, 1)
    return (-5.0 + 8.0 * position ** (0.7 + 1.3 * ratio_0_to_1)).astype(np.float32)


def time_first(dim: int) -> np.ndarray:
    """RWKV_TimeMix's ``log(0.3) + zigzag``, zigzag = ``0.5 * ((i + 1) % 3 - 1)``; float32 ``[dim]``."""
    zigzag = 0.5 * ((np.arange(dim) + 1) % 3 - 1)
    return (math.log(0.3) + zigzag).astype(np.float32)


def time_mix(
    layer_id: int, n_layer: int, n_embd: int, exponent_scale: float, offset: float = 0.0
) -> np.ndarray:
    """``(i / n_embd)^(exponent_scale * ratio_1_to_almost0) + offset``, float32 ``[n_embd]``.

    RWKV_TimeMix: time_mix_k (scale 1), time_mix_v (scale 1, offset ``0.3 ratio_0_to_1``, see
    :func:`time_mix_v_offset`), time_mix_r (scale 0.5). RWKV_ChannelMix: time_mix_k and time_mix_r (scale 1).
    The torch code raises a float32 tensor to the power, so we do too.
    """
    _, ratio_1_to_almost0 = layer_ratios(layer_id, n_layer)
    base = (np.arange(n_embd, dtype=np.float64) / n_embd).astype(np.float32)
    exponent = np.float32(exponent_scale * ratio_1_to_almost0)
    return (np.power(base, exponent) + np.float32(offset)).astype(np.float32)


def time_mix_v_offset(layer_id: int, n_layer: int) -> float:
    """The ``0.3 * ratio_0_to_1`` that RWKV_TimeMix adds to time_mix_v."""
    return 0.3 * layer_ratios(layer_id, n_layer)[0]


def orthogonal_kernel(
    key: PRNGKey, in_features: int, out_features: int, scale: float = 1.0, dtype: jnp.dtype = jnp.float32
) -> Array:
    """generate_init_weight's ``orthogonal_(weight [out, in], gain * scale)`` as a kernel ``[in, out]``.

    ``gain = sqrt(out / in)`` when ``out > in``, else 1 (e.g. 2 for the 4x FFN key, ``sqrt(V / C)`` for head).
    """
    gain = math.sqrt(out_features / in_features) if out_features > in_features else 1.0
    weight = jax.nn.initializers.orthogonal(scale=gain * scale)(key, (out_features, in_features), jnp.float32)
    return weight.T.astype(dtype)


def embedding(key: PRNGKey, vocab_size: int, n_embd: int, dtype: jnp.dtype = jnp.float32) -> Array:
    """generate_init_weight's emb.weight ``[V, C]``: uniform in ``[-s, s]``, s = EMBEDDING_INIT_SCALE."""
    scale = EMBEDDING_INIT_SCALE
    return jax.random.uniform(key, (vocab_size, n_embd), jnp.float32, -scale, scale).astype(dtype)
