"""The official initialisation of Eagle (RWKV-5) and Finch (RWKV-6), as formulas.

Source: BlinkDL/RWKV-LM, ``RWKV-v5/src/model.py`` at commit 86affd7 (2024-07-03, the last revision before
RWKV-7; the Eagle/Finch parts are unchanged at HEAD): ``RWKV_Tmix_x052.__init__``,
``RWKV_Tmix_x060.__init__``, ``RWKV_CMix_x052/x060.__init__`` (the ``time_*`` vectors and the LoRA
matrices); ``RWKV.generate_init_weight`` (every other matrix, ``ln_x.weight``, the embedding and the
head) is shared with Goose in :mod:`rwkv_jax.models.official_init`. The early RWKV-5 ("5.1" here:
per-head scalar decay, no gate) follows ``RWKV_TimeMix_RWKV5_Preview`` of ``RWKV-v4neo/src/model.py`` at
commit 6c7f271 (2023-09-22).

Notation of the source: layer ``l`` of ``L``, ``ratio_0_to_1 = l / (L - 1)``,
``ratio_1_to_almost0 = 1 - l / L``, ``ddd[i] = i / C`` over the ``C`` model channels. Precision follows the
torch code: the ``time_mix`` / ``time_maa`` powers of ``ddd`` are float32 arithmetic on a float32 tensor;
``time_decay`` and ``time_faaaa`` are Python floats (float64), rounded when the caller casts them.
"""

from collections.abc import Sequence

import numpy as np

from rwkv_jax.models.official_init import layer_ratios, ramp_power

# time_maa_w2, time_decay_w2 ~ U(-0.01, 0.01); the w1 matrices start at zero. This is RWKV-LM from cf854f3
# (2024-04-06) on; the first Finch commits drew w1 from U(-0.01, 0.01) with w2 zero (8fea4eb), then both
# from U(-1e-4, 1e-4) (62572c9).
LORA_W2_BOUND = 0.01
BONUS_5_1 = -3.0  # RWKV-5.1 time_first (log of the bonus), one per head


def eagle_time_mix(channels: int, layer: int, n_layer: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Eagle's ``att.time_mix_{name} [C]`` float32 (weight of the current token) for each of ``names``.

    The published Eagle has k, v, r, g (5.2) or k, v, r (5.1); ``w`` (the input of a data-dependent decay,
    an ablation) gets k's formula, as Finch's ``time_maa_w`` is ``1 -`` k's.
    """
    r01, r10 = layer_ratios(layer, n_layer)
    full, half = ramp_power(channels, r10), ramp_power(channels, 0.5 * r10)
    formulas = {"w": full, "k": full, "v": full + np.float32(0.3 * r01), "r": half, "g": half}
    return {name: formulas[name].copy() for name in names}


def finch_time_maa(channels: int, layer: int, n_layer: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Finch's ``att.time_maa_{x, *names} [C]`` float32 (weight of the previous token): ``1 -`` Eagle's mix,
    with ``time_maa_x`` as ``time_maa_k`` (the published Finch: names w, k, v, r, g)."""
    eagle = eagle_time_mix(channels, layer, n_layer, ("k", *names))
    one = np.float32(1.0)
    return {"x": one - eagle["k"]} | {name: one - eagle[name] for name in names}


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
