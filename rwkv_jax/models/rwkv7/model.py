"""RWKV-7 "Goose" language model in Flax NNX (arXiv 2503.14456; BlinkDL ``x070``).

Per block, the time mix makes r, k, v, a log decay and an in-context learning rate ``iclr`` from six
token-shift mixes of its input, normalises the key per head (``kk``) and runs the WKV-7 state update
``S <- S (diag(decay) - kk (kk * iclr)^T) + v k^T`` (``rwkv_jax.wkv.v7``). The value of every block but the
first is pulled towards the first block's value (the "value residual", hence ``v_first`` threaded through
the blocks of one call). ``model(tokens, state) -> (logits, state)`` serves prefill, decoding and training.

Each of those parts is an ablation switch of :class:`RWKV7Config` (``token_shift``, ``value_residual``,
``delta_rule``, ``bonus``, ``normalize_kk``, and ``init``), every one defaulting to the published x070.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.array_typing import Array
from rwkv_jax.models import official_init
from rwkv_jax.models.block_remat import rematerialised
from rwkv_jax.models.common import (
    INITS,
    PLAIN_BONUS,
    PLAIN_DECAY,
    PLAIN_MIX,
    Embedding,
    HeadGroupNorm,
    LayerNorm,
    PublishedArchitecture,
    matmul,
    official_or_constant,
    official_or_normal,
    param,
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
from rwkv_jax.models.layer_scan import run_layers
from rwkv_jax.models.official_init import initial_linear
from rwkv_jax.models.rwkv7 import init as rwkv7_init
from rwkv_jax.sharding import keep_batch_sharded
from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.v7 import wkv7
from rwkv_jax.wkv.v7_chunked import DEFAULT_CHUNK_SIZE

# RWKV-7's log decay is -exp(-0.5) sigmoid(z): the official -softplus(-z) - 0.5, exponentiated once more.
MAX_LOG_DECAY_RATE = float(np.exp(-0.5))
LORAS = ("decay", "iclr", "value", "gate")
SWITCHES = ("token_shift", "value_residual", "delta_rule", "bonus", "normalize_kk")  # published: all True
# Plain init of the logit biases: w0 gives the decay PLAIN_DECAY (w_log = -exp(-0.5) sigmoid(w0)); a0 = v0 = 0
# (iclr and the value-residual pull 0.5); k_k = k_a = 1 (kk = k, k scaled by iclr); r_k = PLAIN_BONUS.
PLAIN_W0 = float(-np.log(MAX_LOG_DECAY_RATE / -np.log(PLAIN_DECAY) - 1.0))
PLAIN_BIASES = {"w0": PLAIN_W0, "a0": 0.0, "v0": 0.0, "k_k": 1.0, "k_a": 1.0}


@dataclasses.dataclass(frozen=True)
class RWKV7Config(PublishedArchitecture):
    """Sizes, numerics and ablation switches of an RWKV-7 model (every switch defaults to the published
    architecture: arXiv 2503.14456, BlinkDL ``RWKV_Tmix_x070``).

    Attributes:
      vocab_size, n_layer, n_embd: V, L, C.
      head_size: N; H = n_embd // head_size heads (the time-mix width is C, as in every release).
      ffn_dim: F, the channel-mix width (None: 4 C, as RWKV-LM).
      decay_lora, iclr_lora, value_lora, gate_lora: LoRA ranks (None: RWKV-LM's suggestion for C,
        ``max(32, round(f sqrt(C) / 32) * 32)`` with f = 2.5, 2.5, 1.7, 5).
      group_norm_eps: eps of ``ln_x`` (64e-5 as BlinkDL).
      layer_norm_eps: eps of ln0, ln1, ln2, ln_out.
      dtype: compute dtype of activations and matmuls; the WKV state and normalisations stay float32.
      param_dtype: storage dtype of every parameter; None: the matrices in ``dtype``, the rest in float32
        (:func:`rwkv_jax.models.common.weight_dtype`).
      wkv_impl: the WKV-7 form (``Impl`` or its name: recurrent, scan, chunked or auto).
      chunk_size: chunk length of the chunked WKV-7 form (16: its default, the fastest training form on
        CPU; also the Pallas form's tokens per grid step where ``wkv_impl`` names it).
      token_shift: True (published): every mix interpolates this token's input with the previous one's.
        False: the previous-token input of every mix is the current token, so the mixes are identities with
        no ``x_*`` parameters; the state keeps ``att_x`` and ``ffn_x``, unused.
      value_residual: True (published, paper section 4): every block but the first pulls its value towards
        the first block's, ``v += (v_first - v) sigmoid(v0 + lora_v(x_v))``; block 0 holds ``v0/v1/v2``
        unused, as RWKV-LM's trainer. False: v is used as is, no ``v0/v1/v2`` in any block.
      delta_rule: True (published): the state update removes the old value along the key,
        ``S <- S (diag(w) - kk^T (kk * iclr)) + v^T k`` with the in-context learning rate
        ``iclr = sigmoid(a0 + lora_a(x_a))``, and k is rescaled by ``1 + (iclr - 1) k_a``. False: no removal
        (the WKV-7 update gets ``b = 0``, a pure decayed sum like Eagle's), k is not rescaled; no ``x_a``,
        ``a0/a1/a2``, ``k_k``, ``k_a``.
      bonus: True (published): the current token's ``(r . (k * r_k)) v`` per head is added after ``ln_x``.
        False: no bonus term, no ``r_k``.
      normalize_kk: True (published): the removal key ``kk = k * k_k`` is L2-normalised per head.
        False: ``kk = k * k_k`` unnormalised. Needs delta_rule (without it there is no removal key).
      init: "official" (BlinkDL's formulas, ``init.py`` and :mod:`rwkv_jax.models.official_init`) or
        "plain" (every matrix ``N(0, 0.02^2)``, token-shift weights 0.5, one decay ``exp(w_log) = 0.9``,
        ``a0 = v0 = 0``, ``k_k = k_a = 1``, ``r_k = 1``, ``ln_x`` weight 1: see :data:`PLAIN_BIASES` and
        :data:`rwkv_jax.models.common.PLAIN_STD`). Not an architecture switch.
    """

    vocab_size: int = 65536
    n_layer: int = 12
    n_embd: int = 768
    head_size: int = 64
    ffn_dim: int | None = None
    decay_lora: int | None = None
    iclr_lora: int | None = None
    value_lora: int | None = None
    gate_lora: int | None = None
    group_norm_eps: float = 64e-5
    layer_norm_eps: float = 1e-5
    dtype: np.dtype | str = "float32"
    param_dtype: np.dtype | str | None = None
    wkv_impl: Impl | str = Impl.AUTO
    chunk_size: int = DEFAULT_CHUNK_SIZE
    token_shift: bool = True
    value_residual: bool = True
    delta_rule: bool = True
    bonus: bool = True
    normalize_kk: bool = True
    init: str = "official"

    def __post_init__(self):
        require_positive_ints(self, "vocab_size", "n_layer", "n_embd", "head_size", "chunk_size")
        if self.n_embd % self.head_size:
            raise ValueError(
                f"RWKV7Config.n_embd ({self.n_embd}) must be a multiple of head_size ({self.head_size})"
            )
        if self.ffn_dim is None:
            object.__setattr__(self, "ffn_dim", 4 * self.n_embd)
        for kind in LORAS:
            if getattr(self, f"{kind}_lora") is None:
                object.__setattr__(self, f"{kind}_lora", rwkv7_init.lora_rank(kind, self.n_embd))
        require_positive_ints(self, "ffn_dim", *(f"{kind}_lora" for kind in LORAS))
        require_positive_floats(self, "group_norm_eps", "layer_norm_eps")
        resolve_float_dtypes(self, "dtype", "param_dtype")
        object.__setattr__(self, "wkv_impl", Impl.parse(self.wkv_impl))
        require_bools(self, *SWITCHES)
        require_choice(self, "init", INITS)
        if not self.delta_rule and not self.normalize_kk:
            raise ValueError(
                "RWKV7Config.normalize_kk=False has no effect with delta_rule=False (there is no removal key "
                "kk); leave normalize_kk True"
            )

    def published_switches(self) -> dict[str, tuple[object, object]]:
        """``{switch: (value, published value)}`` (see :class:`PublishedArchitecture`)."""
        return {name: (getattr(self, name), True) for name in SWITCHES}

    @property
    def n_head(self) -> int:
        """H = n_embd // head_size."""
        return self.n_embd // self.head_size


class RWKV7LayerState(NamedTuple):
    """Recurrent state of one block; every field float32 with batch on axis 0.

    att_x: ``[B, C]`` last ln1 output (time-mix token shift).
    wkv:   ``[B, H, N, N]`` WKV-7 state indexed ``[b, h, value, key]``.
    ffn_x: ``[B, C]`` last ln2 output (channel-mix token shift).
    """

    att_x: Array
    wkv: Array
    ffn_x: Array


def _normalize_heads(x: Array, head_size: int) -> Array:
    """``x [..., H N]`` float32, divided per head by its L2 norm (at least 1e-12, as torch's normalize)."""
    heads = x.reshape(*x.shape[:-1], -1, head_size).astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(heads), axis=-1, keepdims=True))
    return (heads / jnp.maximum(norm, 1e-12)).reshape(x.shape)


def _lerp_previous(x: Array, delta: Array, weight: nnx.Param | None) -> Array:
    """``x + (prev - x) weight`` (``delta = prev - x``); ``x`` itself without token shift (weight None)."""
    return x if weight is None else x + delta * weight[...].astype(x.dtype)


def _shift_weight(config: "RWKV7Config", official: np.ndarray) -> nnx.Param | None:
    """A token-shift weight ``[C]`` of the previous token: ``official`` or 0.5 (plain); None without shift."""
    if not config.token_shift:
        return None
    return param(
        jnp.asarray(official_or_constant(config, official, PLAIN_MIX), vector_dtype(config)), ("embed",)
    )


class TimeMix(nnx.Module):
    """RWKV-7's attention-like block (``att``); parameters named as the official ``blocks.i.att.*``.

    ``x_r ... x_g [C]`` token-shift weights; ``w0 [C]``, ``w1 [C, D]``, ``w2 [D, C]`` the decay;
    ``a0, a1, a2`` the in-context learning rate; ``v0, v1, v2`` the value residual (unused in block 0);
    ``g1, g2`` the gate; ``k_k``, ``k_a [C]``; ``r_k [H, N]``; receptance, key, value ``Linear [C, C]``,
    output ``Linear [C, C]``; ``ln_x`` the per-head GroupNorm. The ablation switches of the config remove
    the parameters of the parts they turn off.
    """

    def __init__(self, config: RWKV7Config, layer: int, rngs: nnx.Rngs):
        C, H, N, L, pd = config.n_embd, config.n_head, config.head_size, config.n_layer, vector_dtype(config)
        self.head_size, self.dtype = N, config.dtype
        self.wkv_impl, self.chunk_size = config.wkv_impl, config.chunk_size
        self.first = layer == 0
        self.value_residual = config.value_residual and not self.first  # the first block's value is v_first
        self.delta_rule, self.normalize_kk = config.delta_rule, config.normalize_kk
        self.inputs = tuple(n for n in "rwkvag" if n != "a" or config.delta_rule)  # x_a feeds iclr only
        for name, value in rwkv7_init.token_shift_weights(C, layer, L).items():
            if name in self.inputs:
                setattr(self, f"x_{name}", _shift_weight(config, value))
        biases = rwkv7_init.time_mix_biases(C, N, layer, L)
        biases = {
            name: official_or_constant(config, value, PLAIN_BIASES[name]) for name, value in biases.items()
        }
        # Block 0 holds v0, v1, v2 too, never read: RWKV-LM's trainer creates them in every block, so its
        # files have them (and its strict load_state_dict wants them in ours).
        used = {"w": True, "a": config.delta_rule, "v": config.value_residual, "g": True}
        wd = weight_dtype(config)  # the LoRA matrices'
        # Construction order = the official parameter order (so random draws follow the file layout).
        for prefix, kind in (("w", "decay"), ("a", "iclr"), ("v", "value"), ("g", "gate")):
            if not used[prefix]:
                continue
            rank = getattr(config, f"{kind}_lora")
            w1 = official_or_normal(rngs, config, (C, rank), lambda rank=rank: jnp.zeros((C, rank), wd))
            setattr(self, f"{prefix}1", param(w1, ("embed", "lora")))
            w2 = official_or_normal(
                rngs,
                config,
                (rank, C),
                lambda rank=rank: official_init.orthogonal_kernel(
                    rngs.params(), rank, C, rwkv7_init.lora_w2_gain(rank, C), wd
                ),
            )
            setattr(self, f"{prefix}2", param(w2, ("lora", "embed")))
            if prefix != "g":
                setattr(self, f"{prefix}0", param(jnp.asarray(biases[f"{prefix}0"], pd), ("embed",)))
        if config.delta_rule:
            self.k_k = param(jnp.asarray(biases["k_k"], pd), ("embed",))
            self.k_a = param(jnp.asarray(biases["k_a"], pd), ("embed",))
        r_k = official_or_constant(config, np.full((H, N), rwkv7_init.R_K), PLAIN_BONUS)
        self.r_k = param(jnp.asarray(r_k, pd), ("heads", "head_dim")) if config.bonus else None
        gains = {
            "receptance": official_init.GAIN_RECEPTANCE,
            "key": official_init.GAIN_KEY,
            "value": official_init.GAIN_VALUE,
            "output": official_init.GAIN_OUTPUT,
        }
        for name, gain in gains.items():
            axes = ("heads", "embed") if name == "output" else ("embed", "heads")
            setattr(self, name, initial_linear(rngs, config, (C, C), axes, gain))
        ln_x_weight = official_or_constant(config, official_init.ln_x_weight(C, layer, L), 1.0)
        self.ln_x = HeadGroupNorm(H, ln_x_weight, eps=config.group_norm_eps, param_dtype=pd)

    def _lora(self, prefix: str, x: Array, inner=None) -> Array:
        """``inner(x @ {prefix}1) @ {prefix}2`` in the compute dtype (``inner`` None: identity)."""
        hidden = matmul(x, getattr(self, f"{prefix}1")[...], self.dtype)
        if inner is not None:
            hidden = inner(hidden)
        return matmul(hidden, getattr(self, f"{prefix}2")[...], self.dtype)

    def _removal(self, k: Array, mixed_a: Array) -> tuple[Array, Array, Array]:
        """The delta rule's ``(a, b, k)``: removal key ``a = -kk``, ``b = kk * iclr`` and k rescaled by iclr,
        float32 ``[B, T, C]``; without the delta rule ``a = b = 0`` (no removal) and k as is."""
        f32 = jnp.float32
        if not self.delta_rule:
            zeros = jnp.zeros(k.shape, f32)
            return zeros, zeros, k.astype(f32)
        iclr = jax.nn.sigmoid(self.a0[...].astype(f32) + self._lora("a", mixed_a).astype(f32))
        kk = k.astype(f32) * self.k_k[...].astype(f32)
        if self.normalize_kk:
            kk = _normalize_heads(kk, self.head_size)
        k = k.astype(f32) * (1 + (iclr - 1) * self.k_a[...].astype(f32))
        return -kk, kk * iclr, k

    def __call__(
        self, x: Array, prev: Array, v_first: Array | None, state: Array, starts: Array | None = None
    ) -> tuple[Array, ...]:
        """``x``, ``prev`` ``[B, T, C]`` (ln1 output and its shift), the first block's value (None in block
        0), the WKV state and ``starts [B, T]`` bool document starts or None. Returns ``(out [B, T, C],
        v_first, state)``."""
        B, T, C = x.shape
        delta = prev - x
        mixed = {n: _lerp_previous(x, delta, getattr(self, f"x_{n}", None)) for n in self.inputs}
        r, k, v = self.receptance(mixed["r"]), self.key(mixed["k"]), self.value(mixed["v"])
        f32 = jnp.float32
        decay_logit = self.w0[...].astype(f32) + self._lora("w", mixed["w"], jnp.tanh).astype(f32)
        w_log = -MAX_LOG_DECAY_RATE * jax.nn.sigmoid(decay_logit)
        if self.first:
            v_first = v
        if self.value_residual:
            pull = jax.nn.sigmoid(self.v0[...].astype(f32) + self._lora("v", mixed["v"]).astype(f32))
            v = (v + (v_first - v) * pull).astype(v.dtype)
        gate = self._lora("g", mixed["g"], jax.nn.sigmoid)
        a, b, k = self._removal(k, mixed.get("a"))
        heads = (B, T, -1, self.head_size)
        r_h, k_h, v_h = r.reshape(heads), k.reshape(heads), v.reshape(heads)
        y, state = wkv7(
            r_h, k_h, v_h, w_log.reshape(heads), a.reshape(heads), b.reshape(heads), state,
            impl=self.wkv_impl, chunk_size=self.chunk_size, starts=starts,
        )  # fmt: skip
        y = self.ln_x(y)  # [B, T, C] float32
        if self.r_k is not None:
            bonus = jnp.sum(r_h.astype(f32) * k_h * self.r_k[...].astype(f32), axis=-1, keepdims=True)
            y = y + (bonus * v_h.astype(f32)).reshape(B, T, C)
        return self.output(y.astype(self.dtype) * gate), v_first, state


class ChannelMix(nnx.Module):
    """The feed-forward block (``ffn``): ``value(relu(key(x + (prev - x) x_k)) ** 2)``."""

    def __init__(self, config: RWKV7Config, layer: int, rngs: nnx.Rngs):
        C, F = config.n_embd, config.ffn_dim
        self.x_k = _shift_weight(config, rwkv7_init.channel_mix_weight(C, layer, config.n_layer))
        self.key = initial_linear(rngs, config, (C, F), ("embed", "mlp"), official_init.GAIN_FFN_KEY)
        self.value = initial_linear(rngs, config, (F, C), ("mlp", "embed"), official_init.GAIN_FFN_VALUE)

    def __call__(self, x: Array, prev: Array) -> Array:
        mixed = _lerp_previous(x, prev - x, self.x_k)
        return self.value(jnp.square(jax.nn.relu(self.key(mixed))))


class Block(nnx.Module):
    """``x += att(ln1(x)); x += ffn(ln2(x))``, each with its token shift; block 0 first applies ``ln0``."""

    def __init__(self, config: RWKV7Config, layer: int, rngs: nnx.Rngs):
        norm = dict(eps=config.layer_norm_eps, param_dtype=vector_dtype(config))
        C = config.n_embd
        self.ln0 = LayerNorm(C, **norm) if layer == 0 else None
        self.ln1, self.ln2 = LayerNorm(C, **norm), LayerNorm(C, **norm)
        self.att = TimeMix(config, layer, rngs)
        self.ffn = ChannelMix(config, layer, rngs)

    def __call__(
        self, x: Array, v_first: Array | None, state: RWKV7LayerState, starts: Array | None = None
    ) -> tuple[Array, Array, RWKV7LayerState]:
        """``x [B, T, C]``, the first block's value (None for block 0), the layer's state and ``starts
        [B, T]`` bool (or None): packed documents start there (state and token shift return to ``state``)."""
        if self.ln0 is not None:
            x = self.ln0(x)
        h = self.ln1(x)
        prev, att_x = token_shift(h, state.att_x, starts)
        update, v_first, wkv = self.att(h, prev, v_first, state.wkv, starts)
        x = x + update.astype(x.dtype)
        h = self.ln2(x)
        prev, ffn_x = token_shift(h, state.ffn_x, starts)
        x = x + self.ffn(h, prev).astype(x.dtype)
        return x, v_first, RWKV7LayerState(att_x.astype(jnp.float32), wkv, ffn_x.astype(jnp.float32))


class RWKV7(LanguageModel):
    """RWKV-7 language model: ``model(tokens[B, T], state) -> (logits[B, T, V] float32, state)``.

    Parameters are initialised as BlinkDL/RWKV-LM does (``rwkv7_init``); official checkpoints load with
    ``rwkv_jax.models.rwkv7.convert``. Attribute paths spell the official keys (``blocks.1.att.v2``, ...).
    """

    # The whole one-token program: it decodes faster than layer by layer, and Goose's decoding peak stays
    # well under the rwkv package's without the smaller compiles (docs/speed.md).
    layerwise_decoding = False

    def __init__(self, config: RWKV7Config, *, rngs: nnx.Rngs):
        if not isinstance(config, RWKV7Config):
            raise TypeError(f"config must be an RWKV7Config, got {type(config).__name__}")
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
        self.blocks = nnx.List(Block(config, layer, rngs) for layer in range(config.n_layer))
        self.ln_out = LayerNorm(C, eps=config.layer_norm_eps, param_dtype=vector_dtype(config))
        self.head = initial_linear(rngs, config, (C, V), ("embed", "vocab"), official_init.head_gain(V, C))

    def unused_parameters(self) -> frozenset[tuple]:
        """Paths of the parameters the forward pass never reads (no gradient reaches them): block 0's value
        residual ``v0, v1, v2``, kept for RWKV-LM's checkpoint layout."""
        if not self.config.value_residual:
            return frozenset()
        return frozenset(("blocks", 0, "att", name) for name in ("v0", "v1", "v2"))

    def empty_layer_state(self, batch_size: int) -> RWKV7LayerState:
        """Zero token shifts and a zero WKV state, float32."""
        c = self.config
        token = jnp.zeros((batch_size, c.n_embd), jnp.float32)
        wkv = jnp.zeros((batch_size, c.n_head, c.head_size, c.head_size), jnp.float32)
        return RWKV7LayerState(token, wkv, token)

    @staticmethod
    def call_block(
        block: nnx.Module, carry: Any, layer_state: RWKV7LayerState
    ) -> tuple[Any, RWKV7LayerState]:
        """One block on ``carry``: ``x`` for block 0 (which makes ``v_first``), ``(x, v_first)`` after it;
        returns ``(x, v_first)`` and the layer's new state (as :meth:`run_blocks` calls the blocks)."""
        x, v_first = carry if isinstance(carry, tuple) else (carry, None)
        x, v_first, layer_state = block(x, v_first, layer_state)
        return (x, v_first), layer_state

    def run_blocks(
        self, x: Array, state: tuple[RWKV7LayerState, ...], starts: Array | None = None
    ) -> tuple[Array, tuple]:
        """The blocks in order, each also given the first block's value (the value residual). Block 0 runs
        alone (it produces ``v_first``); the rest as a scan over layers (see
        :func:`rwkv_jax.models.layer_scan.run_layers`, which falls back to a loop where they differ)."""
        remat = rematerialised if self.remat_blocks else lambda call: call
        x, v_first, first_state = remat(lambda block, *args: block(*args))(
            self.blocks[0], x, None, state[0], starts
        )

        @remat
        def step(block: nnx.Module, carry: tuple[Array, Array], layer_state: RWKV7LayerState) -> tuple:
            x, v_first = carry
            x, _, layer_state = block(x, v_first, layer_state, starts)  # later blocks return v_first as given
            return keep_batch_sharded((x, v_first)), layer_state

        blocks = list(self.blocks)[1:]
        (x, _), rest = run_layers(
            blocks, (x, v_first), state[1:], step, scan=self.scan_layers, keep_products=not self.remat_blocks
        )
        return x, (first_state, *rest)
