"""RWKV-4 (arXiv 2305.13048) in Flax NNX: the math of BlinkDL/RWKV-LM ``RWKV-v4neo/src/model.py``.

Attribute names follow the official checkpoint (``emb``, ``blocks[i].ln0/ln1/ln2/att/ffn``, ``ln_out``,
``head``) so that a parameter's path is its official key (see ``rwkv_jax.models.rwkv4.convert``).
``time_decay`` is stored raw as in the checkpoint; the WKV recurrence gets ``w_log = -exp(time_decay)``.

One call serves training, prefill and decoding::

    logits, state = model(tokens)            # [B, T] int32 -> [B, T, V] float32, from the empty state
    logits, state = model(next_tokens, state)  # continue

The state is a tuple with one :class:`RWKV4LayerState` per layer; every leaf is float32 with batch on axis 0.
The ablation switches (``token_shift``, ``init``) are config fields whose defaults are the published model.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.array_typing import Array
from rwkv_jax.models.common import (
    INITS,
    PLAIN_BONUS,
    PLAIN_MIX,
    Embedding,
    LayerNorm,
    Linear,
    PublishedArchitecture,
    official_or_constant,
    official_or_normal,
    param,
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
from rwkv_jax.models.rwkv4 import init
from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.v4 import WKV4State, wkv4


@dataclasses.dataclass(frozen=True)
class RWKV4Config(PublishedArchitecture):
    """Sizes, numerics and ablation switches of an RWKV-4 model.

    The defaults are the published RWKV-4 Pile 169M (GPT-NeoX tokenizer); every switch defaults to the
    published architecture (arXiv 2305.13048, BlinkDL ``RWKV-v4neo/src/model.py``).

    Attributes:
      vocab_size: V, number of token ids.
      n_layer: L, number of blocks.
      n_embd: C, model width (also the time-mix width, as in every released RWKV-4).
      ffn_dim: F, channel-mix hidden width; None means ``4 * n_embd``.
      dtype: compute dtype of activations and matmuls (float32 or bfloat16). WKV state is float32 always.
      param_dtype: storage dtype of every parameter; None: the matrices in ``dtype``, the rest in float32
        (:func:`rwkv_jax.models.common.weight_dtype`).
      wkv_impl: WKV-4 form (an :class:`Impl` or its name); ``"auto"`` resolves by backend.
      layer_norm_eps: epsilon of every LayerNorm (torch's default, 1e-5, in the official model).
      token_shift: True (published, paper section 4.1): every mix interpolates this token's input with the
        previous one's (``time_mix_*``). False: the previous-token input of every mix is the current token,
        so the mixes are identities and have no ``time_mix_*`` parameters; the state keeps ``att_x`` and
        ``ffn_x`` (the last inputs), unused.
      init: "official" (RWKV-LM's fancy init and ``generate_init_weight``, :mod:`rwkv_jax.models.rwkv4.init`)
        or "plain" (every matrix ``N(0, 0.02^2)``, mixes 0.5, one decay ``exp(w_log) = 0.9`` and bonus
        ``time_first = 0`` everywhere: see :data:`rwkv_jax.models.common.PLAIN_STD`). Not an architecture
        switch: an official checkpoint holds either.
    """

    vocab_size: int = 50277
    n_layer: int = 12
    n_embd: int = 768
    ffn_dim: int | None = None
    dtype: np.dtype | str = "float32"
    param_dtype: np.dtype | str | None = None
    wkv_impl: Impl | str = Impl.AUTO
    layer_norm_eps: float = 1e-5
    token_shift: bool = True
    init: str = "official"

    def __post_init__(self):
        require_positive_ints(self, "vocab_size", "n_layer", "n_embd")
        if self.ffn_dim is None:
            object.__setattr__(self, "ffn_dim", 4 * self.n_embd)
        require_positive_ints(self, "ffn_dim")
        resolve_float_dtypes(self, "dtype", "param_dtype")
        object.__setattr__(self, "wkv_impl", Impl.parse(self.wkv_impl))
        require_positive_floats(self, "layer_norm_eps")
        require_bools(self, "token_shift")
        require_choice(self, "init", INITS)

    def published_switches(self) -> dict[str, tuple[object, object]]:
        """``{switch: (value, published value)}`` (see :class:`PublishedArchitecture`)."""
        return {"token_shift": (self.token_shift, True)}


class RWKV4LayerState(NamedTuple):
    """Recurrent state of one block; every field float32 with batch on axis 0.

    att_x: ``[B, C]`` last ln1 output (time-mix token shift).
    wkv:   :class:`WKV4State` of the time-mix recurrence (``[B, C]`` each).
    ffn_x: ``[B, C]`` last ln2 output (channel-mix token shift).
    """

    att_x: Array
    wkv: WKV4State
    ffn_x: Array

    @classmethod
    def zeros(cls, batch_size: int, n_embd: int) -> "RWKV4LayerState":
        zero = jnp.zeros((batch_size, n_embd), jnp.float32)
        return cls(zero, WKV4State.zeros(batch_size, n_embd), zero)


RWKV4State = tuple[RWKV4LayerState, ...]


def _mix_weight(config: RWKV4Config, official: np.ndarray) -> nnx.Param | None:
    """A ``time_mix_*`` weight ``[C]`` of the current token: ``official``, or 0.5 under the plain init; None
    without token shift (the mix is then the identity)."""
    if not config.token_shift:
        return None
    value = official_or_constant(config, official, PLAIN_MIX)
    return param(jnp.asarray(value, vector_dtype(config)), ("embed",))


def _zeros(config: RWKV4Config, *shape: int):
    """The official initial value of a matrix that generate_init_weight zeroes (a thunk, drawing nothing)."""
    return lambda: jnp.zeros(shape, weight_dtype(config))


def _mix(x: Array, shifted: Array, ratio: nnx.Param | None) -> Array:
    """``x * ratio + shifted * (1 - ratio)``: interpolation between this token and the previous one
    (``x`` itself when ``ratio`` is None: token shift off)."""
    if ratio is None:
        return x
    ratio = ratio[...].astype(x.dtype)
    return x * ratio + shifted * (1 - ratio)


class TimeMix(nnx.Module):
    """RWKV_TimeMix: token-shifted k, v, r projections, the WKV-4 recurrence, sigmoid(r) gate, output."""

    def __init__(self, config: RWKV4Config, layer_id: int, *, rngs: nnx.Rngs):
        C, L, pdt = config.n_embd, config.n_layer, vector_dtype(config)
        self.wkv_impl = config.wkv_impl
        # The attention width (C here) carries "heads" as in Eagle / Finch / Goose (there: H * N channels).
        decay = official_or_constant(config, init.time_decay(layer_id, L, C), plain_log_rate())
        self.time_decay = param(jnp.asarray(decay, pdt), ("heads",))
        bonus = official_or_constant(config, init.time_first(C), math.log(PLAIN_BONUS))
        self.time_first = param(jnp.asarray(bonus, pdt), ("heads",))
        v_offset = init.time_mix_v_offset(layer_id, L)
        self.time_mix_k = _mix_weight(config, init.time_mix(layer_id, L, C, 1.0))
        self.time_mix_v = _mix_weight(config, init.time_mix(layer_id, L, C, 1.0, v_offset))
        self.time_mix_r = _mix_weight(config, init.time_mix(layer_id, L, C, 0.5))
        linear = dict(dtype=config.dtype, param_dtype=weight_dtype(config))
        # generate_init_weight: att.value orthogonal, att.key / receptance / output zero (init.ZERO_INIT).
        key = official_or_normal(rngs, config, (C, C), _zeros(config, C, C))
        self.key = Linear(C, C, ("embed", "heads"), kernel=key, **linear)
        value = official_or_normal(rngs, config, (C, C), lambda: init.orthogonal_kernel(rngs.params(), C, C))
        self.value = Linear(C, C, ("embed", "heads"), kernel=value, **linear)
        receptance = official_or_normal(rngs, config, (C, C), _zeros(config, C, C))
        self.receptance = Linear(C, C, ("embed", "heads"), kernel=receptance, **linear)
        output = official_or_normal(rngs, config, (C, C), _zeros(config, C, C))
        self.output = Linear(C, C, ("heads", "embed"), kernel=output, **linear)

    def __call__(
        self, x: Array, prev_x: Array, wkv_state: WKV4State, starts: Array | None = None
    ) -> tuple[Array, Array, WKV4State]:
        """x: ``[B, T, C]`` (ln1 output), ``starts [B, T]`` bool document starts or None; returns the block
        update ``[B, T, C]``, new prev_x and WKV state."""
        shifted, last_x = token_shift(x, prev_x, starts)
        k = self.key(_mix(x, shifted, self.time_mix_k))
        v = self.value(_mix(x, shifted, self.time_mix_v))
        r = jax.nn.sigmoid(self.receptance(_mix(x, shifted, self.time_mix_r)))
        w_log = -jnp.exp(self.time_decay[...].astype(jnp.float32))
        u = self.time_first[...].astype(jnp.float32)
        y, wkv_state = wkv4(w_log, u, k, v, wkv_state, impl=self.wkv_impl, starts=starts)
        return self.output(r * y), last_x.astype(jnp.float32), wkv_state


class ChannelMix(nnx.Module):
    """RWKV_ChannelMix: ``sigmoid(receptance(xr)) * value(relu(key(xk))^2)`` on token-shifted inputs."""

    def __init__(self, config: RWKV4Config, layer_id: int, *, rngs: nnx.Rngs):
        C, F, L = config.n_embd, config.ffn_dim, config.n_layer
        self.time_mix_k = _mix_weight(config, init.time_mix(layer_id, L, C, 1.0))
        self.time_mix_r = _mix_weight(config, init.time_mix(layer_id, L, C, 1.0))
        linear = dict(dtype=config.dtype, param_dtype=weight_dtype(config))
        # generate_init_weight: ffn.key orthogonal (gain sqrt(F / C)), ffn.receptance / value zero.
        key = official_or_normal(rngs, config, (C, F), lambda: init.orthogonal_kernel(rngs.params(), C, F))
        self.key = Linear(C, F, ("embed", "mlp"), kernel=key, **linear)
        receptance = official_or_normal(rngs, config, (C, C), _zeros(config, C, C))
        self.receptance = Linear(C, C, ("embed", None), kernel=receptance, **linear)
        value = official_or_normal(rngs, config, (F, C), _zeros(config, F, C))
        self.value = Linear(F, C, ("mlp", "embed"), kernel=value, **linear)

    def __call__(self, x: Array, prev_x: Array, starts: Array | None = None) -> tuple[Array, Array]:
        """x: ``[B, T, C]`` (ln2 output); returns the block update ``[B, T, C]`` and the new prev_x."""
        shifted, last_x = token_shift(x, prev_x, starts)
        hidden = jnp.square(jax.nn.relu(self.key(_mix(x, shifted, self.time_mix_k))))
        gate = jax.nn.sigmoid(self.receptance(_mix(x, shifted, self.time_mix_r)))
        return gate * self.value(hidden), last_x.astype(jnp.float32)


class Block(nnx.Module):
    """A residual block: ``x += att(ln1(x)); x += ffn(ln2(x))``; block 0 first applies ``ln0`` to x."""

    def __init__(self, config: RWKV4Config, layer_id: int, *, rngs: nnx.Rngs):
        norm = dict(eps=config.layer_norm_eps, param_dtype=vector_dtype(config))
        self.ln0 = LayerNorm(config.n_embd, **norm) if layer_id == 0 else None
        self.ln1 = LayerNorm(config.n_embd, **norm)
        self.ln2 = LayerNorm(config.n_embd, **norm)
        self.att = TimeMix(config, layer_id, rngs=rngs)
        self.ffn = ChannelMix(config, layer_id, rngs=rngs)

    def __call__(
        self, x: Array, state: RWKV4LayerState, starts: Array | None = None
    ) -> tuple[Array, RWKV4LayerState]:
        if self.ln0 is not None:
            x = self.ln0(x)
        update, att_x, wkv_state = self.att(self.ln1(x), state.att_x, state.wkv, starts)
        x = x + update
        update, ffn_x = self.ffn(self.ln2(x), state.ffn_x, starts)
        return x + update, RWKV4LayerState(att_x, wkv_state, ffn_x)


class RWKV4(LanguageModel):
    """The RWKV-4 language model: emb -> blocks -> ln_out -> head."""

    def __init__(self, config: RWKV4Config, *, rngs: nnx.Rngs):
        C, V, wd = config.n_embd, config.vocab_size, weight_dtype(config)
        self.config = config
        self.emb = Embedding(
            official_or_normal(rngs, config, (V, C), lambda: init.embedding(rngs.params(), V, C, wd))
        )
        self.blocks = nnx.List([Block(config, i, rngs=rngs) for i in range(config.n_layer)])
        self.ln_out = LayerNorm(C, eps=config.layer_norm_eps, param_dtype=vector_dtype(config))
        # generate_init_weight: head orthogonal with gain sqrt(V / C) (when V > C) times 0.5.
        head = official_or_normal(
            rngs, config, (C, V), lambda: init.orthogonal_kernel(rngs.params(), C, V, init.HEAD_INIT_SCALE)
        )
        self.head = Linear(C, V, ("embed", "vocab"), kernel=head, dtype=config.dtype, param_dtype=wd)

    def empty_layer_state(self, batch_size: int) -> RWKV4LayerState:
        """Zero token shifts and the empty WKV state (running maximum at -1e38)."""
        return RWKV4LayerState.zeros(batch_size, self.config.n_embd)
