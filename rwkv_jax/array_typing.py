"""Dimension legend and array aliases used in signatures across rwkv_jax.

Letters used in shape comments and annotations:

    B  batch                     T  time (sequence length)
    C  model width (n_embd)      F  channel-mix hidden width (ffn)
    V  vocabulary size           L  number of layers
    H  heads                     N  head size (64 by default)
    K  state key index (= N)     D  LoRA rank

Activations are ``[B, T, C]``; per-head WKV inputs are ``[B, T, H, N]``. A matrix-valued WKV state is
``[B, H, N, N]``, indexed ``[b, h, key, value]`` by Eagle / Finch (``S <- diag(w) S + k v^T``, ``y = r S``)
and ``[b, h, value, key]`` by Goose (``S <- S (diag(w) + a b^T) + v k^T``, ``y = S r``), each as its official
kernels; RWKV-4's state is three ``[B, C]`` vectors (``num``, ``den``, ``max_exp``). Decay is passed in log
space (``w_log <= 0``). Recurrent state is always float32.
"""

from typing import TypeAlias

import jax

Array: TypeAlias = jax.Array
Tokens: TypeAlias = jax.Array  # int32 [B, T]
PRNGKey: TypeAlias = jax.Array
