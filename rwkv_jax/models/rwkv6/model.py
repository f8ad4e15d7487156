"""Eagle (RWKV-5) and Finch (RWKV-6) language models in Flax NNX (arXiv 2404.05892).

One model for the three layouts, chosen by ``RWKV6Config.version``:

- ``"6"``   Finch (BlinkDL ``x060``): data-dependent token shift (ddlerp) and data-dependent decay (LoRA);
- ``"5.2"`` Eagle (``x052``): static token shift, static decay per head and channel, gate;
- ``"5.1"`` the early RWKV-5 (``RWKV_TimeMix_RWKV5_Preview`` without its gate): static decay and bonus, one
  scalar per head (bonus stored as a log, ``time_first``), no gate. (BlinkDL's ``rwkv`` package calls this
  layout "v5"; its "v5.1" has a gate.)

The version is looked at here only: it gives the defaults of the ablation switches ``token_shift_mix`` and
``decay``, which pick the token-shift mix and the decay of each layer (``layers.py``), and the layout-specific
parts (gate, bonus, channel-mix names) and the official initialisation (``init.py``).
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
    INITS,
    PLAIN_BONUS,
    PLAIN_MIX,
    Embedding,
    HeadGroupNorm,
    LayerNorm,
    PublishedArchitecture,
    official_or_constant,
    official_or_normal,
    plain_log_rate,
    require_bools,
    require_choice,
    require_positive_floats,
    require_positive_ints,
    resolve_float_dtypes,
    token_shift,
    vector_dtype,
    weight_dtype,
)
from rwkv_jax.models.language_model import LanguageModel
from rwkv_jax.models.official_init import initial_linear
from rwkv_jax.models.rwkv6 import init
from rwkv_jax.models.rwkv6.layers import (
    Bonus,
    ChannelMix,
    DataDependentLerp,
    LoraDecay,
    StaticDecay,
    StaticLerp,
    TimeMix,
    Unmixed,
)
from rwkv_jax.wkv.impl import Impl

VERSIONS = ("5.1", "5.2", "6")
# Values of the token_shift_mix and decay switches; None resolves from the version (DATA_DEPENDENT for "6").
STATIC, DATA_DEPENDENT = "static", "data_dependent"
KINDS = (None, STATIC, DATA_DEPENDENT)


def default_ffn_dim(n_embd: int) -> int:
    """RWKV-LM's default channel-mix width: ``int(3.5 C) // 32 * 32`` (``train.py``, ``dim_ffn``)."""
    return int(n_embd * 3.5) // 32 * 32


@dataclasses.dataclass(frozen=True)
class RWKV6Config(PublishedArchitecture):
    """Sizes, numerics and ablation switches of an Eagle / Finch model (every switch defaults to the
    published architecture of ``version``).

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
      param_dtype: storage dtype of every parameter; None: the matrices in ``dtype``, the rest in float32
        (:func:`rwkv_jax.models.common.weight_dtype`).
      wkv_impl: the WKV-5/6 form (``Impl`` or its name).
      chunk_size: chunk length of the chunked WKV form.
      token_shift: True (published): the time and channel mixes interpolate this token's input with the
        previous one's (arXiv 2404.05892 section 4). False: the previous-token input of every mix is the
        current token, so the mixes are identities with no ``time_mix_*`` / ``time_maa_*`` parameters (and
        no ddlerp LoRA); the state keeps ``att_x`` and ``ffn_x``, unused.
      token_shift_mix: the time mix's token shift: "data_dependent" (Finch's ddlerp, section 5, BlinkDL
        ``RWKV_Tmix_x060``: ``time_maa_*`` and the LoRA ``time_maa_w1/w2``) or "static" (Eagle's lerp,
        ``RWKV_Tmix_x052``: ``time_mix_*``); None: the version's ("6": data_dependent, "5.x": static).
        Must stay None without token shift. The channel mix is static in every version.
      decay: "data_dependent" (Finch: ``time_decay [A]`` plus the LoRA ``time_decay_w1/w2`` of the mixed
        input ``x_w``) or "static" (Eagle: ``time_decay [H, N]``, or ``[H]`` in 5.1); None: the version's.
        A data-dependent decay adds the mixed input ``w`` to the token shift (Eagle-style mixes get a
        ``time_mix_w``); a static one drops it from Finch's ddlerp (4 LoRA slots instead of 5).
      init: "official" (BlinkDL's formulas, ``init.py`` and :mod:`rwkv_jax.models.official_init`; a
        non-published combination takes the formulas of each part) or "plain" (every matrix
        ``N(0, 0.02^2)``, mixes 0.5, one decay ``exp(w_log) = 0.9``, bonus 1, ``ln_x`` weight 1: see
        :data:`rwkv_jax.models.common.PLAIN_STD`). Not an architecture switch.
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
    param_dtype: np.dtype | str | None = None
    wkv_impl: Impl | str = Impl.AUTO
    chunk_size: int = 64
    token_shift: bool = True
    token_shift_mix: str | None = None
    decay: str | None = None
    init: str = "official"

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
        require_bools(self, "token_shift")
        require_choice(self, "token_shift_mix", KINDS)
        require_choice(self, "decay", KINDS)
        require_choice(self, "init", INITS)
        if not self.token_shift and self.token_shift_mix is not None:
            raise ValueError(
                f"RWKV6Config.token_shift_mix={self.token_shift_mix!r} has no effect with token_shift=False "
                "(there is no mix); leave token_shift_mix None"
            )

    @property
    def published_kind(self) -> str:
        """The token-shift mix and decay of the published ``version``: data_dependent for "6", else static."""
        return DATA_DEPENDENT if self.version == "6" else STATIC

    @property
    def mix_kind(self) -> str:
        """``token_shift_mix`` resolved: "static" or "data_dependent"."""
        return self.token_shift_mix or self.published_kind

    @property
    def decay_kind(self) -> str:
        """``decay`` resolved: "static" or "data_dependent"."""
        return self.decay or self.published_kind

    @property
    def gated(self) -> bool:
        """Whether the time mix has the output gate ``g`` (every version but 5.1)."""
        return self.version != "5.1"

    def published_switches(self) -> dict[str, tuple[object, object]]:
        """``{switch: (value, published value)}`` (see :class:`PublishedArchitecture`)."""
        return {
            "token_shift": (self.token_shift, True),
            "token_shift_mix": (self.mix_kind, self.published_kind),
            "decay": (self.decay_kind, self.published_kind),
        }

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


def _mix_names(config: RWKV6Config) -> tuple[str, ...]:
    """The time-mix inputs the layer uses, in ddlerp slot order: w (for a data-dependent decay), k, v, r, g
    (with the gate)."""
    names = ("w",) if config.decay_kind == DATA_DEPENDENT else ()
    return (*names, "k", "v", "r", *(("g",) if config.gated else ()))


def _static_lerp(config: RWKV6Config, official: dict[str, np.ndarray], prefix: str, weights_current: bool):
    """A :class:`StaticLerp` with the ``official`` weights (0.5 each under the plain init)."""
    weights = {name: official_or_constant(config, value, PLAIN_MIX) for name, value in official.items()}
    pd = vector_dtype(config)
    return StaticLerp(weights, prefix=prefix, weights_current=weights_current, param_dtype=pd)


def _token_mix(config: RWKV6Config, layer: int, rngs: nnx.Rngs) -> StaticLerp | DataDependentLerp | Unmixed:
    """The time-mix token shift of the config, with its initial values."""
    C, L, pd = config.n_embd, config.n_layer, vector_dtype(config)
    names = _mix_names(config)
    if not config.token_shift:
        return Unmixed(names)
    if config.mix_kind == STATIC:
        return _static_lerp(
            config, init.eagle_time_mix(C, layer, L, names), "time_mix_", weights_current=True
        )
    S, D, wd = len(names), config.time_mix_extra_dim, weight_dtype(config)
    w2 = official_or_normal(
        rngs,
        config,
        (S, D, C),
        lambda: official_init.uniform(rngs.params(), (S, D, C), init.LORA_W2_BOUND, wd),
    )
    w1 = official_or_normal(rngs, config, (C, S * D), lambda: jnp.zeros((C, S * D), wd))
    maa = init.finch_time_maa(C, layer, L, names)
    maa = {name: official_or_constant(config, value, PLAIN_MIX) for name, value in maa.items()}
    return DataDependentLerp(maa, w1, w2, param_dtype=pd, lora_dtype=wd, dtype=config.dtype)


def _decay(config: RWKV6Config, layer: int, rngs: nnx.Rngs) -> StaticDecay | LoraDecay:
    """The decay of the config, with its initial values."""
    A, H, N, L, pd = config.dim_att, config.n_head, config.head_size, config.n_layer, vector_dtype(config)
    if config.decay_kind == DATA_DEPENDENT:
        C, D, wd = config.n_embd, config.time_decay_extra_dim, weight_dtype(config)
        w2 = official_or_normal(
            rngs, config, (D, A), lambda: official_init.uniform(rngs.params(), (D, A), init.LORA_W2_BOUND, wd)
        )
        w1 = official_or_normal(rngs, config, (C, D), lambda: jnp.zeros((C, D), wd))
        speed = official_or_constant(config, init.decay_speed(A, layer, L), plain_log_rate())
        return LoraDecay(speed, w1, w2, param_dtype=pd, lora_dtype=wd, dtype=config.dtype)
    # 5.1: one decay per head; 5.2 (and a static decay in Finch): one per head and channel.
    speed = init.decay_speed(H, layer, L) if config.version == "5.1" else init.decay_speed(A, layer, L)
    speed = official_or_constant(config, speed, plain_log_rate())
    return StaticDecay(speed if config.version == "5.1" else speed.reshape(H, N), param_dtype=pd)


def _bonus(config: RWKV6Config, layer: int) -> Bonus:
    """5.1: a log-bonus per head (``time_first``); else ``time_faaaa [H, N]``."""
    H, N = config.n_head, config.head_size
    if config.version == "5.1":
        value = official_or_constant(config, np.full((H,), init.BONUS_5_1), np.log(PLAIN_BONUS))
    else:
        value = official_or_constant(
            config, init.bonus_zigzag(config.dim_att, layer, config.n_layer), PLAIN_BONUS
        )
        value = value.reshape(H, N)
    return Bonus(value, param_dtype=vector_dtype(config))


def _time_mix(config: RWKV6Config, layer: int, rngs: nnx.Rngs) -> TimeMix:
    C, A, H, N, L = config.n_embd, config.dim_att, config.n_head, config.head_size, config.n_layer
    # Construction order = BlinkDL's parameter order, so the random draws follow the official file layout.
    mix = _token_mix(config, layer, rngs)
    decay = _decay(config, layer, rngs)
    return TimeMix(
        mix=mix,
        decay=decay,
        bonus=_bonus(config, layer),
        receptance=initial_linear(rngs, config, (C, A), ("embed", "heads"), official_init.GAIN_RECEPTANCE),
        key=initial_linear(rngs, config, (C, A), ("embed", "heads"), official_init.GAIN_KEY),
        value=initial_linear(rngs, config, (C, A), ("embed", "heads"), official_init.GAIN_VALUE),
        output=initial_linear(rngs, config, (A, C), ("heads", "embed"), official_init.GAIN_OUTPUT),
        gate=initial_linear(rngs, config, (C, A), ("embed", "heads"), official_init.GAIN_GATE)
        if config.gated
        else None,
        ln_x=HeadGroupNorm(
            H,
            official_or_constant(config, official_init.ln_x_weight(A, layer, L), 1.0),
            eps=config.group_norm_eps,
            param_dtype=vector_dtype(config),
        ),
        head_size=N,
        wkv_impl=config.wkv_impl,
        chunk_size=config.chunk_size,
    )


def _channel_mix(config: RWKV6Config, layer: int, rngs: nnx.Rngs) -> ChannelMix:
    C, F = config.n_embd, config.ffn_dim
    if config.token_shift:
        weights = init.channel_mix_weights(C, layer, config.n_layer, finch=config.is_finch)
        prefix = "time_maa_" if config.is_finch else "time_mix_"
        mix = _static_lerp(config, weights, prefix, weights_current=not config.is_finch)
    else:
        mix = Unmixed(("k", "r"))
    return ChannelMix(
        mix=mix,
        key=initial_linear(rngs, config, (C, F), ("embed", "mlp"), official_init.GAIN_FFN_KEY),
        receptance=initial_linear(rngs, config, (C, C), ("embed", None), official_init.GAIN_FFN_RECEPTANCE),
        value=initial_linear(rngs, config, (F, C), ("mlp", "embed"), official_init.GAIN_FFN_VALUE),
    )


class Block(nnx.Module):
    """``x += att(ln1(x)); x += ffn(ln2(x))``, each with its token shift; block 0 first applies ``ln0``."""

    def __init__(
        self, *, ln0: LayerNorm | None, ln1: LayerNorm, ln2: LayerNorm, att: TimeMix, ffn: ChannelMix
    ):
        self.ln0, self.ln1, self.ln2, self.att, self.ffn = ln0, ln1, ln2, att, ffn

    def __call__(
        self, x: Array, state: RWKV6LayerState, starts: Array | None = None
    ) -> tuple[Array, RWKV6LayerState]:
        """``x [B, T, C]`` in the compute dtype and the layer's state; returns both updated. ``starts [B, T]``
        bool (or None): packed documents start there (state and token shift return to ``state``)."""
        if self.ln0 is not None:
            x = self.ln0(x)
        h = self.ln1(x)
        prev, att_x = token_shift(h, state.att_x, starts)
        update, wkv = self.att(h, prev, state.wkv, starts)
        x = x + update.astype(x.dtype)
        h = self.ln2(x)
        prev, ffn_x = token_shift(h, state.ffn_x, starts)
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
        C, V, wd = config.n_embd, config.vocab_size, weight_dtype(config)
        self.emb = Embedding(
            official_or_normal(
                rngs,
                config,
                (V, C),
                lambda: official_init.uniform(rngs.params(), (V, C), official_init.EMBEDDING_BOUND, wd),
            )
        )
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
        self.head = initial_linear(rngs, config, (C, V), ("embed", "vocab"), official_init.head_gain(V, C))

    def _layer_norm(self) -> LayerNorm:
        c = self.config
        return LayerNorm(c.n_embd, eps=c.layer_norm_eps, param_dtype=vector_dtype(c))

    def empty_layer_state(self, batch_size: int) -> RWKV6LayerState:
        """Zero token shifts and a zero WKV state, float32."""
        c = self.config
        token = jnp.zeros((batch_size, c.n_embd), jnp.float32)
        wkv = jnp.zeros((batch_size, c.n_head, c.head_size, c.head_size), jnp.float32)
        return RWKV6LayerState(token, wkv, token)
