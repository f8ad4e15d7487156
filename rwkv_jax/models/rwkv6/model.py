"""Eagle (RWKV-5) and Finch (RWKV-6) language models in Flax NNX (arXiv 2404.05892).

One model for the three layouts, chosen by ``RWKV6Config.version``:

- ``"6"``   Finch (BlinkDL ``x060``): data-dependent token shift (ddlerp) and data-dependent decay (LoRA);
- ``"5.2"`` Eagle (``x052``): static token shift, static decay per head and channel, gate;
- ``"5.1"`` the early RWKV-5 (``RWKV_TimeMix_RWKV5_Preview`` without its gate): static decay and bonus, one
  scalar per head (bonus stored as a log, ``time_first``), no gate. (BlinkDL's ``rwkv`` package calls this
  layout "v5"; its "v5.1" has a gate.)

The version is looked at here only: it picks the token-shift mix and the decay of each layer
(``rwkv6_layers``) and the official initialisation (``rwkv6_init``).
``model(tokens, state) -> (logits, state)`` serves prefill, decoding and training alike.
"""

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.array_typing import Array
from rwkv_jax.models import official_init
from rwkv_jax.models.common import (
    Embedding,
    HeadGroupNorm,
    LayerNorm,
    require_positive_floats,
    require_positive_ints,
    resolve_float_dtypes,
    token_shift,
)
from rwkv_jax.models.language_model import LanguageModel
from rwkv_jax.models.official_init import orthogonal_linear
from rwkv_jax.models.rwkv6 import init
from rwkv_jax.models.rwkv6.layers import (
    Bonus,
    ChannelMix,
    DataDependentLerp,
    LoraDecay,
    StaticDecay,
    StaticLerp,
    TimeMix,
)
from rwkv_jax.wkv.impl import Impl

VERSIONS = ("5.1", "5.2", "6")


def default_ffn_dim(n_embd: int) -> int:
    """RWKV-LM's default channel-mix width: ``int(3.5 C) // 32 * 32`` (``train.py``, ``dim_ffn``)."""
    return int(n_embd * 3.5) // 32 * 32


@dataclasses.dataclass(frozen=True)
class RWKV6Config:
    """Sizes and numerics of an Eagle / Finch model.

    Attributes:
      version: "6" (Finch), "5.2" (Eagle) or "5.1" (early RWKV-5: per-head scalar decay, no gate).
      vocab_size, n_layer, n_embd: V, L, C.
      head_size: N; the number of heads is ``dim_att // head_size``.
      dim_att: A, the width of r, k, v (None: ``n_embd``, resolved at construction, so
        ``dataclasses.replace(config, n_embd=...)`` keeps the old value: pass dim_att=None again).
      ffn_dim: F, the channel-mix width (None: ``int(3.5 C) // 32 * 32`` as RWKV-LM; resolved likewise).
      time_mix_extra_dim: Finch's ddlerp LoRA rank (BlinkDL: 32; 64 for the largest models).
      time_decay_extra_dim: Finch's decay LoRA rank (BlinkDL: 64; 128 for the largest models).
      group_norm_eps: eps of ``ln_x`` (64e-5 as BlinkDL; rwkv.cpp used 1e-5 for RWKV-5).
      layer_norm_eps: eps of ln0, ln1, ln2, ln_out (torch's default 1e-5).
      dtype: compute dtype of activations and matmuls; the WKV state and normalisations stay float32.
      param_dtype: storage dtype of the parameters.
      wkv_impl: the WKV-5/6 form (``Impl`` or its name).
      chunk_size: chunk length of the chunked WKV form.
    """

    version: str = "6"
    vocab_size: int = 65536
    n_layer: int = 12
    n_embd: int = 768
    head_size: int = 64
    dim_att: int | None = None
    ffn_dim: int | None = None
    time_mix_extra_dim: int = 32
    time_decay_extra_dim: int = 64
    group_norm_eps: float = 64e-5
    layer_norm_eps: float = 1e-5
    dtype: np.dtype | str = "float32"
    param_dtype: np.dtype | str = "float32"
    wkv_impl: Impl | str = Impl.AUTO
    chunk_size: int = 64

    def __post_init__(self):
        if self.version not in VERSIONS:
            raise ValueError(
                f"RWKV6Config.version must be one of {VERSIONS} (Eagle 5.x or Finch 6), got {self.version!r}"
            )
        sizes = ("vocab_size", "n_layer", "n_embd", "head_size", "chunk_size")
        require_positive_ints(self, *sizes, "time_mix_extra_dim", "time_decay_extra_dim")
        if self.dim_att is None:
            object.__setattr__(self, "dim_att", self.n_embd)
        if self.ffn_dim is None:
            object.__setattr__(self, "ffn_dim", default_ffn_dim(self.n_embd))
        require_positive_ints(self, "dim_att", "ffn_dim")
        if self.dim_att % self.head_size:
            raise ValueError(
                f"RWKV6Config.dim_att ({self.dim_att}) must be a multiple of head_size ({self.head_size})"
            )
        require_positive_floats(self, "group_norm_eps", "layer_norm_eps")
        resolve_float_dtypes(self, "dtype", "param_dtype")
        object.__setattr__(self, "wkv_impl", Impl.parse(self.wkv_impl))

    @property
    def n_head(self) -> int:
        """H = dim_att // head_size."""
        return self.dim_att // self.head_size

    @property
    def is_finch(self) -> bool:
        return self.version == "6"


class RWKV6LayerState(NamedTuple):
    """Recurrent state of one block; every field float32 with batch on axis 0.

    att_x: ``[B, C]`` last ln1 output (time-mix token shift).
    wkv:   ``[B, H, N, N]`` WKV state indexed ``[b, h, key, value]``.
    ffn_x: ``[B, C]`` last ln2 output (channel-mix token shift).
    """

    att_x: Array
    wkv: Array
    ffn_x: Array


RWKV6State = tuple[RWKV6LayerState, ...]


def _token_mix(config: RWKV6Config, layer: int, rngs: nnx.Rngs) -> StaticLerp | DataDependentLerp:
    """The time-mix token shift of the version, with its official initial values."""
    C, L, pd = config.n_embd, config.n_layer, config.param_dtype
    if not config.is_finch:
        weights = init.eagle_time_mix(C, layer, L, gate=config.version == "5.2")
        return StaticLerp(weights, prefix="time_mix_", weights_current=True, param_dtype=pd)
    D = config.time_mix_extra_dim
    w2 = official_init.uniform(rngs.params(), (5, D, C), init.LORA_W2_BOUND, pd)
    maa = init.finch_time_maa(C, layer, L)
    return DataDependentLerp(maa, jnp.zeros((C, 5 * D), pd), w2, param_dtype=pd, dtype=config.dtype)


def _decay(config: RWKV6Config, layer: int, rngs: nnx.Rngs) -> StaticDecay | LoraDecay:
    """The decay of the version, with its official initial values."""
    A, H, N, L, pd = config.dim_att, config.n_head, config.head_size, config.n_layer, config.param_dtype
    if config.version == "5.1":
        return StaticDecay(init.decay_speed(H, layer, L), param_dtype=pd)
    speed = init.decay_speed(A, layer, L)
    if config.version == "5.2":
        return StaticDecay(speed.reshape(H, N), param_dtype=pd)
    D = config.time_decay_extra_dim
    w2 = official_init.uniform(rngs.params(), (D, A), init.LORA_W2_BOUND, pd)
    return LoraDecay(speed, jnp.zeros((config.n_embd, D), pd), w2, param_dtype=pd, dtype=config.dtype)


def _time_mix(config: RWKV6Config, layer: int, rngs: nnx.Rngs) -> TimeMix:
    C, A, H, N, L = config.n_embd, config.dim_att, config.n_head, config.head_size, config.n_layer
    if config.version == "5.1":
        bonus = np.full((H,), init.BONUS_5_1)
    else:
        bonus = init.bonus_zigzag(A, layer, L).reshape(H, N)
    gated = config.version != "5.1"
    # Construction order = BlinkDL's parameter order, so the random draws follow the official file layout.
    mix = _token_mix(config, layer, rngs)
    decay = _decay(config, layer, rngs)
    return TimeMix(
        mix=mix,
        decay=decay,
        bonus=Bonus(bonus, param_dtype=config.param_dtype),
        receptance=orthogonal_linear(rngs, config, (C, A), ("embed", "heads"), official_init.GAIN_RECEPTANCE),
        key=orthogonal_linear(rngs, config, (C, A), ("embed", "heads"), official_init.GAIN_KEY),
        value=orthogonal_linear(rngs, config, (C, A), ("embed", "heads"), official_init.GAIN_VALUE),
        output=orthogonal_linear(rngs, config, (A, C), ("heads", "embed"), official_init.GAIN_OUTPUT),
        gate=orthogonal_linear(rngs, config, (C, A), ("embed", "heads"), official_init.GAIN_GATE)
        if gated
        else None,
        ln_x=HeadGroupNorm(
            H,
            official_init.ln_x_weight(A, layer, L),
            eps=config.group_norm_eps,
            param_dtype=config.param_dtype,
        ),
        head_size=N,
        wkv_impl=config.wkv_impl,
        chunk_size=config.chunk_size,
    )


def _channel_mix(config: RWKV6Config, layer: int, rngs: nnx.Rngs) -> ChannelMix:
    C, F = config.n_embd, config.ffn_dim
    weights = init.channel_mix_weights(C, layer, config.n_layer, finch=config.is_finch)
    prefix = "time_maa_" if config.is_finch else "time_mix_"
    mix = StaticLerp(
        weights, prefix=prefix, weights_current=not config.is_finch, param_dtype=config.param_dtype
    )
    return ChannelMix(
        mix=mix,
        key=orthogonal_linear(rngs, config, (C, F), ("embed", "mlp"), official_init.GAIN_FFN_KEY),
        receptance=orthogonal_linear(
            rngs, config, (C, C), ("embed", None), official_init.GAIN_FFN_RECEPTANCE
        ),
        value=orthogonal_linear(rngs, config, (F, C), ("mlp", "embed"), official_init.GAIN_FFN_VALUE),
    )


class Block(nnx.Module):
    """``x += att(ln1(x)); x += ffn(ln2(x))``, each with its token shift; block 0 first applies ``ln0``."""

    def __init__(
        self, *, ln0: LayerNorm | None, ln1: LayerNorm, ln2: LayerNorm, att: TimeMix, ffn: ChannelMix
    ):
        self.ln0, self.ln1, self.ln2, self.att, self.ffn = ln0, ln1, ln2, att, ffn

    def __call__(self, x: Array, state: RWKV6LayerState) -> tuple[Array, RWKV6LayerState]:
        """``x [B, T, C]`` in the compute dtype and the layer's state; returns both updated."""
        if self.ln0 is not None:
            x = self.ln0(x)
        h = self.ln1(x)
        prev, att_x = token_shift(h, state.att_x)
        update, wkv = self.att(h, prev, state.wkv)
        x = x + update.astype(x.dtype)
        h = self.ln2(x)
        prev, ffn_x = token_shift(h, state.ffn_x)
        x = x + self.ffn(h, prev).astype(x.dtype)
        return x, RWKV6LayerState(att_x.astype(jnp.float32), wkv, ffn_x.astype(jnp.float32))


class RWKV6(LanguageModel):
    """Eagle / Finch language model: ``model(tokens[B, T], state) -> (logits[B, T, V] float32, state)``.

    Parameters are initialised as BlinkDL/RWKV-LM does (see ``rwkv6_init``); official checkpoints load with
    ``rwkv_jax.models.rwkv6.convert``. Attribute paths follow the official keys (``emb.weight``,
    ``blocks.0.ln0``, ``blocks.i.att.key``, ...) except that a time mix's token-shift weights live in
    ``att.mix``, its decay in ``att.decay`` and its bonus in ``att.bonus`` (the version's pluggable parts).
    """

    def __init__(self, config: RWKV6Config, *, rngs: nnx.Rngs):
        if not isinstance(config, RWKV6Config):
            raise TypeError(f"config must be an RWKV6Config, got {type(config).__name__}")
        self.config = config
        C, V, pd = config.n_embd, config.vocab_size, config.param_dtype
        self.emb = Embedding(official_init.uniform(rngs.params(), (V, C), official_init.EMBEDDING_BOUND, pd))
        self.blocks = nnx.List(
            Block(
                ln0=self._layer_norm() if layer == 0 else None,
                ln1=self._layer_norm(),
                ln2=self._layer_norm(),
                att=_time_mix(config, layer, rngs),
                ffn=_channel_mix(config, layer, rngs),
            )
            for layer in range(config.n_layer)
        )
        self.ln_out = self._layer_norm()
        self.head = orthogonal_linear(rngs, config, (C, V), ("embed", "vocab"), official_init.head_gain(V, C))

    def _layer_norm(self) -> LayerNorm:
        c = self.config
        return LayerNorm(c.n_embd, eps=c.layer_norm_eps, param_dtype=c.param_dtype)

    def empty_layer_state(self, batch_size: int) -> RWKV6LayerState:
        """Zero token shifts and a zero WKV state, float32."""
        c = self.config
        token = jnp.zeros((batch_size, c.n_embd), jnp.float32)
        wkv = jnp.zeros((batch_size, c.n_head, c.head_size, c.head_size), jnp.float32)
        return RWKV6LayerState(token, wkv, token)
