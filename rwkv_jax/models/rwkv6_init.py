"""The official initialisation of Eagle (RWKV-5) and Finch (RWKV-6), as formulas.

Source: BlinkDL/RWKV-LM, ``RWKV-v5/src/model.py`` at commit 86affd7 (2024-07-03, the last revision before
RWKV-7; the Eagle/Finch parts are unchanged at HEAD): ``RWKV_Tmix_x052.__init__``,
``RWKV_Tmix_x060.__init__``, ``RWKV_CMix_x052/x060.__init__`` (the ``time_*`` vectors and the LoRA
matrices) and ``RWKV.generate_init_weight`` (every other matrix, ``ln_x.weight``, the embedding and the
head). The early RWKV-5 ("5.1" here: per-head scalar decay, no gate) follows ``RWKV_TimeMix_RWKV5_Preview`` of
``RWKV-v4neo/src/model.py`` at commit 6c7f271 (2023-09-22).

Notation of the source: layer ``l`` of ``L``, ``ratio_0_to_1 = l / (L - 1)``,
``ratio_1_to_almost0 = 1 - l / L``, ``ddd[i] = i / C`` over the ``C`` model channels. Precision follows the
torch code: the ``time_mix`` / ``time_maa`` powers of ``ddd`` are float32 arithmetic on a float32 tensor;
``time_decay`` and ``time_faaaa`` are Python floats (float64), rounded when the caller casts them.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.array_typing import Array, PRNGKey
from rwkv_jax.models.common import Linear

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
# time_maa_w2, time_decay_w2 ~ U(-0.01, 0.01); the w1 matrices start at zero. This is RWKV-LM from cf854f3
# (2024-04-06) on; the first Finch commits drew w1 from U(-0.01, 0.01) with w2 zero (8fea4eb), then both
# from U(-1e-4, 1e-4) (62572c9).
LORA_W2_BOUND = 0.01
BONUS_5_1 = -3.0  # RWKV-5.1 time_first (log of the bonus), one per head


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


def eagle_time_mix(channels: int, layer: int, n_layer: int, *, gate: bool) -> dict[str, np.ndarray]:
    """Eagle's ``att.time_mix_{k,v,r[,g]} [C]`` float32 (weight of the current token)."""
    r01, r10 = layer_ratios(layer, n_layer)
    full, half = ramp_power(channels, r10), ramp_power(channels, 0.5 * r10)
    mix = {"k": full, "v": full + np.float32(0.3 * r01), "r": half}
    if gate:
        mix["g"] = half.copy()
    return mix


def finch_time_maa(channels: int, layer: int, n_layer: int) -> dict[str, np.ndarray]:
    """Finch's ``att.time_maa_{x,w,k,v,r,g} [C]`` float32 (weight of the previous token): 1 - Eagle's mix."""
    eagle = eagle_time_mix(channels, layer, n_layer, gate=True)
    one = np.float32(1.0)
    maa = {"x": one - eagle["k"], "w": one - eagle["k"]}
    return maa | {name: one - eagle[name] for name in "kvrg"}


def channel_mix_weights(channels: int, layer: int, n_layer: int, *, finch: bool) -> dict[str, np.ndarray]:
    """Channel-mix ``time_mix_{k,r}`` (Eagle: ``ddd^r``) or ``time_maa_{k,r}`` (Finch: ``1 - ddd^(r^3)``)."""
    _, r10 = layer_ratios(layer, n_layer)
    value = np.float32(1.0) - ramp_power(channels, r10**3) if finch else ramp_power(channels, r10)
    return {"k": value, "r": value.copy()}


def decay_speed(count: int, layer: int, n_layer: int) -> np.ndarray:
    """``time_decay [count]``: ``-6 + 5 (n / (count - 1))^(0.7 + 1.3 ratio_0_to_1)``.

    ``count`` is ``dim_att`` (Eagle 5.2 reshapes it to ``[H, N]``, Finch keeps ``[dim_att]``) or the number of
    heads (5.1). The decay per step is ``exp(-exp(time_decay))``.
    """
    r01, _ = layer_ratios(layer, n_layer)
    n = np.arange(count, dtype=np.float64) / max(count - 1, 1)
    return -6.0 + 5.0 * n ** (0.7 + 1.3 * r01)


def bonus_zigzag(dim_att: int, layer: int, n_layer: int) -> np.ndarray:
    """``time_faaaa [dim_att]``: ``ratio_0_to_1 (1 - n / (dim_att - 1)) + ((n + 1) % 3 - 1) * 0.1``."""
    r01, _ = layer_ratios(layer, n_layer)
    n = np.arange(dim_att)
    zigzag = ((n + 1) % 3 - 1) * 0.1
    return r01 * (1.0 - n / max(dim_att - 1, 1)) + zigzag


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


def orthogonal_linear(
    rngs: nnx.Rngs, config: Any, shape: tuple[int, int], axes: tuple[str, str], gain: float
):
    """A bias-free :class:`Linear` ``[in, out]`` with :func:`orthogonal_kernel` weights, in the compute and
    storage dtypes of ``config`` (an RWKV6Config or RWKV7Config)."""
    kernel = orthogonal_kernel(rngs.params(), *shape, gain, config.param_dtype)
    return Linear(*shape, axes, kernel=kernel, dtype=config.dtype, param_dtype=config.param_dtype)
