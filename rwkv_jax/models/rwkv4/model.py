"""RWKV-4 (arXiv 2305.13048) in Flax NNX: the math of BlinkDL/RWKV-LM ``RWKV-v4neo/src/model.py``.

Attribute names follow the official checkpoint (``emb``, ``blocks[i].ln0/ln1/ln2/att/ffn``, ``ln_out``,
``head``) so that a parameter's path is its official key (see ``rwkv_jax.models.rwkv4.convert``).
``time_decay`` is stored raw as in the checkpoint; the WKV recurrence gets ``w_log = -exp(time_decay)``.

One call serves training, prefill and decoding::

    logits, state = model(tokens)            # [B, T] int32 -> [B, T, V] float32, from the empty state
    logits, state = model(next_tokens, state)  # continue

The state is a tuple with one :class:`RWKV4LayerState` per layer; every leaf is float32 with batch on axis 0.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.array_typing import Array
from rwkv_jax.models.common import (
    Embedding,
    LayerNorm,
    Linear,
    param,
    require_positive_floats,
    require_positive_ints,
    resolve_float_dtypes,
    token_shift,
)
from rwkv_jax.models.language_model import LanguageModel
from rwkv_jax.models.rwkv4 import init
from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.v4 import WKV4State, wkv4


@dataclasses.dataclass(frozen=True)
class RWKV4Config:
    """Sizes and numerics of an RWKV-4 model.

    The defaults are the published RWKV-4 Pile 169M (GPT-NeoX tokenizer).

    Attributes:
      vocab_size: V, number of token ids.
      n_layer: L, number of blocks.
      n_embd: C, model width (also the time-mix width, as in every released RWKV-4).
      ffn_dim: F, channel-mix hidden width; None means ``4 * n_embd``.
      dtype: compute dtype of activations and matmuls (float32 or bfloat16). WKV state is float32 always.
      param_dtype: storage dtype of the parameters (float32 or bfloat16).
      wkv_impl: WKV-4 form (an :class:`Impl` or its name); ``"auto"`` resolves by backend.
      layer_norm_eps: epsilon of every LayerNorm (torch's default, 1e-5, in the official model).
    """

    vocab_size: int = 50277
    n_layer: int = 12
    n_embd: int = 768
    ffn_dim: int | None = None
    dtype: np.dtype | str = "float32"
    param_dtype: np.dtype | str = "float32"
    wkv_impl: Impl | str = Impl.AUTO
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        require_positive_ints(self, "vocab_size", "n_layer", "n_embd")
        if self.ffn_dim is None:
            object.__setattr__(self, "ffn_dim", 4 * self.n_embd)
        require_positive_ints(self, "ffn_dim")
        resolve_float_dtypes(self, "dtype", "param_dtype")
        object.__setattr__(self, "wkv_impl", Impl.parse(self.wkv_impl))
        require_positive_floats(self, "layer_norm_eps")


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


def _mix(x: Array, shifted: Array, ratio: nnx.Param) -> Array:
    """``x * ratio + shifted * (1 - ratio)``: interpolation between this token and the previous one."""
    ratio = ratio[...].astype(x.dtype)
    return x * ratio + shifted * (1 - ratio)


class TimeMix(nnx.Module):
    """RWKV_TimeMix: token-shifted k, v, r projections, the WKV-4 recurrence, sigmoid(r) gate, output."""

    def __init__(self, config: RWKV4Config, layer_id: int, *, rngs: nnx.Rngs):
        C, L, pdt = config.n_embd, config.n_layer, config.param_dtype
        self.wkv_impl = config.wkv_impl
        self.time_decay = param(jnp.asarray(init.time_decay(layer_id, L, C), pdt), ("mlp",))
        self.time_first = param(jnp.asarray(init.time_first(C), pdt), ("mlp",))
        v_offset = init.time_mix_v_offset(layer_id, L)
        self.time_mix_k = param(jnp.asarray(init.time_mix(layer_id, L, C, 1.0), pdt), ("embed",))
        self.time_mix_v = param(jnp.asarray(init.time_mix(layer_id, L, C, 1.0, v_offset), pdt), ("embed",))
        self.time_mix_r = param(jnp.asarray(init.time_mix(layer_id, L, C, 0.5), pdt), ("embed",))
        linear = dict(dtype=config.dtype, param_dtype=pdt)
        # generate_init_weight: att.value orthogonal, att.key / receptance / output zero (init.ZERO_INIT).
        self.key = Linear(C, C, ("embed", "mlp"), **linear)
        value = init.orthogonal_kernel(rngs.params(), C, C)
        self.value = Linear(C, C, ("embed", "mlp"), kernel=value, **linear)
        self.receptance = Linear(C, C, ("embed", "mlp"), **linear)
        self.output = Linear(C, C, ("mlp", "embed"), **linear)

    def __call__(self, x: Array, prev_x: Array, wkv_state: WKV4State) -> tuple[Array, Array, WKV4State]:
        """x: ``[B, T, C]`` (ln1 output); returns the block update ``[B, T, C]``, new prev_x and WKV state."""
        shifted, last_x = token_shift(x, prev_x)
        k = self.key(_mix(x, shifted, self.time_mix_k))
        v = self.value(_mix(x, shifted, self.time_mix_v))
        r = jax.nn.sigmoid(self.receptance(_mix(x, shifted, self.time_mix_r)))
        w_log = -jnp.exp(self.time_decay[...].astype(jnp.float32))
        u = self.time_first[...].astype(jnp.float32)
        y, wkv_state = wkv4(w_log, u, k, v, wkv_state, impl=self.wkv_impl)
        return self.output(r * y), last_x.astype(jnp.float32), wkv_state


class ChannelMix(nnx.Module):
    """RWKV_ChannelMix: ``sigmoid(receptance(xr)) * value(relu(key(xk))^2)`` on token-shifted inputs."""

    def __init__(self, config: RWKV4Config, layer_id: int, *, rngs: nnx.Rngs):
        C, F, L, pdt = config.n_embd, config.ffn_dim, config.n_layer, config.param_dtype
        self.time_mix_k = param(jnp.asarray(init.time_mix(layer_id, L, C, 1.0), pdt), ("embed",))
        self.time_mix_r = param(jnp.asarray(init.time_mix(layer_id, L, C, 1.0), pdt), ("embed",))
        linear = dict(dtype=config.dtype, param_dtype=pdt)
        # generate_init_weight: ffn.key orthogonal (gain sqrt(F / C)), ffn.receptance / value zero.
        key = init.orthogonal_kernel(rngs.params(), C, F)
        self.key = Linear(C, F, ("embed", "mlp"), kernel=key, **linear)
        self.receptance = Linear(C, C, ("embed", None), **linear)
        self.value = Linear(F, C, ("mlp", "embed"), **linear)

    def __call__(self, x: Array, prev_x: Array) -> tuple[Array, Array]:
        """x: ``[B, T, C]`` (ln2 output); returns the block update ``[B, T, C]`` and the new prev_x."""
        shifted, last_x = token_shift(x, prev_x)
        hidden = jnp.square(jax.nn.relu(self.key(_mix(x, shifted, self.time_mix_k))))
        gate = jax.nn.sigmoid(self.receptance(_mix(x, shifted, self.time_mix_r)))
        return gate * self.value(hidden), last_x.astype(jnp.float32)


class Block(nnx.Module):
    """A residual block: ``x += att(ln1(x)); x += ffn(ln2(x))``; block 0 first applies ``ln0`` to x."""

    def __init__(self, config: RWKV4Config, layer_id: int, *, rngs: nnx.Rngs):
        norm = dict(eps=config.layer_norm_eps, param_dtype=config.param_dtype)
        self.ln0 = LayerNorm(config.n_embd, **norm) if layer_id == 0 else None
        self.ln1 = LayerNorm(config.n_embd, **norm)
        self.ln2 = LayerNorm(config.n_embd, **norm)
        self.att = TimeMix(config, layer_id, rngs=rngs)
        self.ffn = ChannelMix(config, layer_id, rngs=rngs)

    def __call__(self, x: Array, state: RWKV4LayerState) -> tuple[Array, RWKV4LayerState]:
        if self.ln0 is not None:
            x = self.ln0(x)
        update, att_x, wkv_state = self.att(self.ln1(x), state.att_x, state.wkv)
        x = x + update
        update, ffn_x = self.ffn(self.ln2(x), state.ffn_x)
        return x + update, RWKV4LayerState(att_x, wkv_state, ffn_x)


class RWKV4(LanguageModel):
    """The RWKV-4 language model: emb -> blocks -> ln_out -> head."""

    def __init__(self, config: RWKV4Config, *, rngs: nnx.Rngs):
        C, V, pdt = config.n_embd, config.vocab_size, config.param_dtype
        self.config = config
        self.emb = Embedding(init.embedding(rngs.params(), V, C, pdt))
        self.blocks = nnx.List([Block(config, i, rngs=rngs) for i in range(config.n_layer)])
        self.ln_out = LayerNorm(C, eps=config.layer_norm_eps, param_dtype=pdt)
        # generate_init_weight: head orthogonal with gain sqrt(V / C) (when V > C) times 0.5.
        head = init.orthogonal_kernel(rngs.params(), C, V, init.HEAD_INIT_SCALE)
        self.head = Linear(C, V, ("embed", "vocab"), kernel=head, dtype=config.dtype, param_dtype=pdt)

    def empty_layer_state(self, batch_size: int) -> RWKV4LayerState:
        """Zero token shifts and the empty WKV state (running maximum at -1e38)."""
        return RWKV4LayerState.zeros(batch_size, self.config.n_embd)
