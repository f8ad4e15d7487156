"""The official initialisation of RWKV-7 "Goose" (x070), as formulas.

Source: BlinkDL/RWKV-LM, ``RWKV-v7/train_temp/src/model.py`` at commit 118e451: ``RWKV_Tmix_x070.__init__``
and ``RWKV_CMix_x070.__init__`` (token-shift weights, decay / in-context learning rate / value-residual / gate
LoRAs and their biases, ``k_k``, ``k_a``, ``r_k``), and ``RWKV.generate_init_weight``, which then replaces
every ``*.weight`` matrix as for Finch (orthogonal receptance, key x0.1, value; zero output and FFN value;
``ln_x.weight = ((1 + l) / L) ** 0.7``; the embedding and head as in :mod:`rwkv_jax.models.official_init`).

Notation of the source: layer ``l`` of ``L``, ``ratio_0_to_1 = l / (L - 1)``, ``ratio_1_to_almost0 =
1 - l / L``, ``ddd[i] = i / C``; over channels n of C with head size N: ``linear[n] = n / (C - 1) - 0.5`` and
``zigzag[n] = z |z|`` with ``z = ((n mod N) - (N - 1) / 2) / ((N - 1) / 2)``.
"""

import numpy as np

from rwkv_jax.models.official_init import layer_ratios, ramp_power

# Token-shift weights x_r, x_w, x_k, x_v, x_a, x_g: 1 - ddd ** (p * ratio_1_to_almost0).
TOKEN_SHIFT_POWERS = {"r": 0.2, "w": 0.9, "k": 0.7, "v": 0.7, "a": 0.9, "g": 0.2}
LORA_W2_SCALE = 0.1  # w2, a2, v2, g2: ortho_init(x, 0.1); w1, a1, v1, g1 start at zero
# LoRA ranks: max(32, round(factor * sqrt(C) / 32) * 32) for the decay, a, value residual and gate.
LORA_RANK_FACTORS = {"decay": 2.5, "iclr": 2.5, "value": 1.7, "gate": 5.0}


def lora_rank(kind: str, n_embd: int) -> int:
    """The suggested LoRA rank of ``kind`` ('decay', 'iclr', 'value' or 'gate') for width ``n_embd``."""
    return max(32, int(round(LORA_RANK_FACTORS[kind] * n_embd**0.5 / 32) * 32))


def lora_w2_gain(rank: int, channels: int) -> float:
    """Orthogonal gain of ``w2, a2, v2, g2 [D, C]``: RWKV-LM's ``ortho_init(x, 0.1)``, whose gain grows by
    ``sqrt(D / C)`` when the rank D exceeds the width C (tiny models), so every singular value is
    ``0.1 max(1, sqrt(D / C))``."""
    return LORA_W2_SCALE * (rank / channels) ** 0.5 if rank > channels else LORA_W2_SCALE


def token_shift_weights(channels: int, layer: int, n_layer: int) -> dict[str, np.ndarray]:
    """``att.x_{r,w,k,v,a,g} [C]`` float32 (the weight of the previous token)."""
    _, r10 = layer_ratios(layer, n_layer)
    return {name: 1.0 - ramp_power(channels, p * r10) for name, p in TOKEN_SHIFT_POWERS.items()}


def channel_mix_weight(channels: int, layer: int, n_layer: int) -> np.ndarray:
    """``ffn.x_k [C]`` float32: ``1 - ddd ** (ratio_1_to_almost0 ** 4)``."""
    _, r10 = layer_ratios(layer, n_layer)
    return 1.0 - ramp_power(channels, r10**4)


def _linear_and_zigzag(channels: int, head_size: int) -> tuple[np.ndarray, np.ndarray]:
    n = np.arange(channels, dtype=np.float64)
    linear = n / (channels - 1) - 0.5
    half = (head_size - 1) / 2
    zigzag = ((n % head_size) - half) / half
    return linear, zigzag * np.abs(zigzag)


def time_mix_biases(channels: int, head_size: int, layer: int, n_layer: int) -> dict[str, np.ndarray]:
    """``w0`` (decay), ``a0`` (in-context learning rate), ``v0`` (value residual) and ``k_k`` ``[C]``, and
    ``k_a`` ``[C]``, float64 as the source's Python arithmetic (rounded when the caller casts)."""
    r01, _ = layer_ratios(layer, n_layer)
    linear, zigzag = _linear_and_zigzag(channels, head_size)
    n = np.arange(channels, dtype=np.float64)
    www = -6.0 + 6.0 * (n / (channels - 1)) ** (1.0 + r01**0.3)
    return {
        "w0": www + 0.5 + zigzag * 2.5,
        "a0": -0.19 + zigzag * 0.3 + linear * 0.4,
        "v0": 0.73 - linear * 0.4,
        "k_k": 0.71 - linear * 0.1,
        "k_a": np.full(channels, 1.02),
    }


R_K = -0.04  # att.r_k [H, N], every entry
