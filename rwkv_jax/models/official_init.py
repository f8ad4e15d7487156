"""Initialisation that RWKV-LM's trainers share across generations (Eagle, Finch and Goose).

Source: BlinkDL/RWKV-LM ``RWKV.generate_init_weight`` (``RWKV-v5/src/model.py`` and
``RWKV-v7/train_temp/src/model.py``): orthogonal matrices with per-name gains, the embedding ``U(-1e-4,
1e-4)``, the head gain ``0.5 sqrt(V / C)``, ``ln_x.weight = ((1 + l) / L) ** 0.7``; and the layer ratios and
channel ramp that every ``__init__`` of a time or channel mix starts from (``ratio_0_to_1 = l / (L - 1)``,
``ratio_1_to_almost0 = 1 - l / L``, ``ddd[i] = i / C``).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.array_typing import Array, PRNGKey
from rwkv_jax.models.common import Linear, official_or_normal, weight_dtype

# Official orthogonal gains of the square-ish matrices (generate_init_weight): 0 means zeros.
GAIN_RECEPTANCE = 1.0
GAIN_KEY = 0.1
GAIN_VALUE = 1.0
GAIN_GATE = 0.1
GAIN_OUTPUT = 0.0
GAIN_FFN_KEY = 1.0
GAIN_FFN_VALUE = 0.0
GAIN_FFN_RECEPTANCE = 0.0
EMBEDDING_BOUND = 1e-4  # emb.weight ~ U(-1e-4, 1e-4)


def layer_ratios(layer: int, n_layer: int) -> tuple[float, float]:
    """``(ratio_0_to_1, ratio_1_to_almost0)`` of layer ``layer``.

    The source divides by ``n_layer - 1``; a one-layer model (a division by zero there) gets ratio 0.
    """
    ratio_0_to_1 = layer / (n_layer - 1) if n_layer > 1 else 0.0
    return ratio_0_to_1, 1.0 - layer / n_layer


def channel_ramp(channels: int) -> np.ndarray:
    """``ddd [C]`` float32: ``i / C`` for channel ``i`` (a Python float written into a float32 tensor)."""
    return (np.arange(channels, dtype=np.float64) / channels).astype(np.float32)


def ramp_power(channels: int, exponent: float) -> np.ndarray:
    """``ddd ** exponent`` in float32, as ``torch.pow`` on the float32 ``ddd``."""
    return np.power(channel_ramp(channels), np.float32(exponent))


def ln_x_weight(dim_att: int, layer: int, n_layer: int) -> np.ndarray:
    """``att.ln_x.weight [dim_att]``: ``((1 + layer) / n_layer) ** 0.7`` everywhere."""
    return np.full((dim_att,), ((1 + layer) / n_layer) ** 0.7)


def head_gain(vocab_size: int, n_embd: int) -> float:
    """Orthogonal gain of ``head.weight``: ``0.5 sqrt(V / C)`` when ``V > C``, else 0.5."""
    return 0.5 * (vocab_size / n_embd) ** 0.5 if vocab_size > n_embd else 0.5


def orthogonal_kernel(
    key: PRNGKey, in_features: int, out_features: int, gain: float, dtype: jnp.dtype
) -> Array:
    """Kernel ``[in, out]`` of a linear layer initialised like ``torch.nn.init.orthogonal_(weight, gain)``.

    Torch's ``weight [out, in]`` has orthonormal rows when ``out <= in``, else orthonormal columns; the kernel
    is its transpose, so it has orthonormal columns when ``out <= in``, else orthonormal rows. Gain 0: zeros.
    """
    if gain == 0.0:
        return jnp.zeros((in_features, out_features), dtype)
    init = jax.nn.initializers.orthogonal(scale=gain, column_axis=-1, dtype=jnp.float32)
    return init(key, (in_features, out_features)).astype(dtype)


def uniform(key: PRNGKey, shape: tuple[int, ...], bound: float, dtype: jnp.dtype) -> Array:
    """``U(-bound, bound)`` of ``shape``."""
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def initial_linear(rngs: nnx.Rngs, config: Any, shape: tuple[int, int], axes: tuple[str, str], gain: float):
    """A bias-free :class:`Linear` ``[in, out]`` computing in ``config.dtype``, stored in its
    :func:`weight_dtype` (any family config with ``dtype``, ``param_dtype`` and ``init``):
    :func:`orthogonal_kernel` weights of ``gain`` under the official initialisation, ``N(0, 0.02^2)`` under
    the plain one (:func:`official_or_normal`)."""
    key = rngs.params()  # drawn even for a zero (gain 0) kernel: the official draws follow the file layout
    dtype = weight_dtype(config)
    kernel = official_or_normal(rngs, config, shape, lambda: orthogonal_kernel(key, *shape, gain, dtype))
    return Linear(*shape, axes, kernel=kernel, dtype=config.dtype, param_dtype=dtype)
