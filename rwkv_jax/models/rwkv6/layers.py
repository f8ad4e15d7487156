"""Layers of Eagle (RWKV-5) and Finch (RWKV-6): token-shift mixes, decays, bonus, time mixing, channel mixing.

The generations share everything except two small pluggable parts (arXiv 2404.05892, sections 4 and 5):

- the token-shift mix that makes the inputs of r, k, v, g (and w): Eagle's :class:`StaticLerp` (one learned
  weight per channel) or Finch's :class:`DataDependentLerp` ("ddlerp": the weights plus a LoRA of the input),
  or :class:`Unmixed` when token shift is ablated (every input is the current token);
- the per-step decay: Eagle's :class:`StaticDecay` (``time_decay`` per head and channel, or per head in
  the early RWKV-5.1) or Finch's :class:`LoraDecay` (``time_decay`` plus a LoRA of the mixed input ``x_w``).

:class:`TimeMix` takes those parts as arguments; only the model builder (``model.py``) picks them, from the
config's ``token_shift``, ``token_shift_mix`` and ``decay`` fields (defaults: the parts of the version).
Parameters keep BlinkDL's names (``time_mix_k``, ``time_maa_w1``, ...) but JAX's layout (kernels
``[in, out]``, vectors ``[C]`` instead of ``(1, 1, C)``); the math follows BlinkDL/RWKV-LM
``RWKV_Tmix_x052``/``x060`` and ``RWKV_CMix_x052``/``x060`` and the inference twin ``rwkv/model.py``.
"""

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from rwkv_jax.array_typing import Array
from rwkv_jax.models.common import HeadGroupNorm, Linear, matmul, param
from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.v6 import wkv6

# The inputs a Finch ddlerp produces, in the order of the slots of time_maa_w1 / time_maa_w2.
DDLERP_NAMES = ("w", "k", "v", "r", "g")


class Unmixed(nnx.Module):
    """Token shift ablated: every mixed input is the current token ``x`` itself (no parameters)."""

    def __init__(self, names: tuple[str, ...]):
        self.names = tuple(names)

    def __call__(self, x: Array, prev: Array) -> dict[str, Array]:
        """``x [B, T, C]``; ``prev`` is unused. Returns ``{name: x}``."""
        del prev
        return {name: x for name in self.names}


def _lerp(x: Array, prev: Array, weight: Array, *, weights_current: bool) -> Array:
    """Mixes ``x`` with the previous token ``prev``; ``weight`` weighs ``x`` or ``prev`` (see StaticLerp)."""
    weight = weight.astype(x.dtype)
    if weights_current:
        return x * weight + prev * (1 - weight)
    return x + (prev - x) * weight


class StaticLerp(nnx.Module):
    """Token-shift mix with one learned weight vector ``[C]`` per output.

    Eagle (``time_mix_*``, ``weights_current=True``): ``out = x m + prev (1 - m)``.
    Finch channel mix (``time_maa_*``, ``weights_current=False``): ``out = x + (prev - x) m``.
    The parameters are named ``{prefix}{name}`` (``time_mix_k`` ...).
    """

    def __init__(
        self,
        weights: Mapping[str, Array],
        *,
        prefix: str,
        weights_current: bool,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        self.names = tuple(weights)
        self.prefix = prefix
        self.weights_current = weights_current
        for name, value in weights.items():
            setattr(self, prefix + name, param(jnp.asarray(value, param_dtype), ("embed",)))

    def __call__(self, x: Array, prev: Array) -> dict[str, Array]:
        """``x``, ``prev``: ``[B, T, C]`` (input, input shifted one step). Returns ``{name: [B, T, C]}``."""
        return {
            name: _lerp(x, prev, getattr(self, self.prefix + name)[...], weights_current=self.weights_current)
            for name in self.names
        }


class DataDependentLerp(nnx.Module):
    """Finch's ddlerp: ``out_n = x + (prev - x) (time_maa_n + lora_n(x + (prev - x) time_maa_x))``.

    ``lora(z) = tanh(z @ time_maa_w1) @ time_maa_w2[n]`` with ``time_maa_w1 [C, S D]`` (S slots of rank ``D``)
    and ``time_maa_w2 [S, D, C]``. Finch has S = 5 slots in the order w, k, v, r, g; an ablation may use
    fewer (in the same order), e.g. k, v, r, g with a static decay that needs no ``x_w``. The weights
    ``time_maa_*`` are stored in ``param_dtype``, the LoRA matrices in ``lora_dtype``.
    """

    def __init__(
        self,
        maa: Mapping[str, Array],
        w1: Array,
        w2: Array,
        *,
        param_dtype: jnp.dtype = jnp.float32,
        lora_dtype: jnp.dtype = jnp.float32,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.names = tuple(maa)[1:]
        if tuple(maa)[:1] != ("x",) or self.names != tuple(n for n in DDLERP_NAMES if n in self.names):
            raise ValueError(
                f"ddlerp needs time_maa weights x then some of {DDLERP_NAMES} in order, got {tuple(maa)}"
            )
        if jnp.shape(w2)[0] != len(self.names):
            raise ValueError(
                f"time_maa_w2 has {jnp.shape(w2)[0]} slots for the {len(self.names)} inputs {self.names}"
            )
        self.dtype = dtype
        for name, value in maa.items():
            setattr(self, "time_maa_" + name, param(jnp.asarray(value, param_dtype), ("embed",)))
        self.time_maa_w1 = param(jnp.asarray(w1, lora_dtype), ("embed", "lora"))
        self.time_maa_w2 = param(jnp.asarray(w2, lora_dtype), (None, "lora", "embed"))

    def __call__(self, x: Array, prev: Array) -> dict[str, Array]:
        """``x``, ``prev``: ``[B, T, C]``. Returns ``{name: [B, T, C]}`` in the compute dtype."""
        x, prev = x.astype(self.dtype), prev.astype(self.dtype)
        delta = prev - x
        lora_in = x + delta * self.time_maa_x[...].astype(self.dtype)
        hidden = jnp.tanh(matmul(lora_in, self.time_maa_w1[...], self.dtype))  # [B, T, S D]
        offsets = slot_offsets(hidden, self.time_maa_w2[...], self.dtype)
        out = {}
        for name, offset in zip(self.names, offsets, strict=True):
            weight = getattr(self, "time_maa_" + name)[...].astype(self.dtype) + offset
            out[name] = x + delta * weight
        return out


# Up to this many rows (a decoding step's batch), slot_offsets computes every slot in one product.
FEW_ROWS = 16


def slot_offsets(hidden: Array, w2: Array, dtype: jnp.dtype) -> list[Array]:
    """``[hidden[..., s D:(s + 1) D] @ w2[s] for s < S]``: each ``[B, T, C]`` in ``dtype``, from ``hidden
    [B, T, S D]`` and ``w2 [S, D, C]``.

    Many rows (training, prompts): one product per slot, not one batched einsum, whose stacked ``[S, B, T,
    C]`` result and gradient cost XLA:CPU pads, sums and a transposed copy per layer (docs/speed.md,
    "Training"). Few rows (decoding): XLA:CPU copies each slot's slice ``w2[s]`` into a fresh buffer before
    its product (docs/speed.md, "LoRA matrices in the weights' dtype"), so the slots are one product of
    ``w2`` as one ``[S D, C]`` matrix (a free reshape) with S rows of ``hidden`` per row, each zero outside
    its slot: S times the multiplies of a small product, ``w2`` read once and not copied.
    """
    slots, rank = w2.shape[:2]
    if math.prod(hidden.shape[:-1]) > FEW_ROWS:
        return [matmul(hidden[..., s * rank : (s + 1) * rank], w2[s], dtype) for s in range(slots)]
    mask = jnp.repeat(jnp.eye(slots, dtype=hidden.dtype), rank, axis=1)  # [S, S D]
    offsets = matmul(hidden[..., None, :] * mask, w2.reshape(slots * rank, -1), dtype)  # [B, T, S, C]
    return [offsets[..., s, :] for s in range(slots)]


class StaticDecay(nnx.Module):
    """Eagle's decay: ``w_log = -exp(time_decay)`` for every token.

    ``time_decay``: ``[H, N]`` (5.2, one per channel) or ``[H]`` (5.1, one per head, shared by its channels).
    """

    def __init__(self, time_decay: Array, *, param_dtype: jnp.dtype = jnp.float32):
        axes = ("heads", "head_dim")[: jnp.ndim(time_decay)]
        self.time_decay = param(jnp.asarray(time_decay, param_dtype), axes)

    def __call__(self, x_w: Array | None, shape: tuple[int, int, int, int]) -> Array:
        """``x_w`` is unused (Eagle's decay ignores the input). Returns ``w_log [B, T, H, N]`` float32."""
        del x_w
        w_log = -jnp.exp(self.time_decay[...].astype(jnp.float32))
        if w_log.ndim == 1:
            w_log = w_log[:, None]
        return jnp.broadcast_to(w_log, shape)


class LoraDecay(nnx.Module):
    """Finch's decay: ``w_log = -exp(time_decay + tanh(x_w @ time_decay_w1) @ time_decay_w2)``.

    ``time_decay [A]`` (``A = H N``) in ``param_dtype``, ``time_decay_w1 [C, D]``, ``time_decay_w2 [D, A]``
    in ``lora_dtype``.
    """

    def __init__(
        self,
        time_decay: Array,
        w1: Array,
        w2: Array,
        *,
        param_dtype: jnp.dtype = jnp.float32,
        lora_dtype: jnp.dtype = jnp.float32,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.dtype = dtype
        self.time_decay = param(jnp.asarray(time_decay, param_dtype), ("heads",))
        self.time_decay_w1 = param(jnp.asarray(w1, lora_dtype), ("embed", "lora"))
        self.time_decay_w2 = param(jnp.asarray(w2, lora_dtype), ("lora", "heads"))

    def __call__(self, x_w: Array | None, shape: tuple[int, int, int, int]) -> Array:
        """``x_w [B, T, C]``: the ddlerp input for w. Returns ``w_log [B, T, H, N]`` float32."""
        if x_w is None:
            raise ValueError(
                "Finch's decay needs the mixed input x_w; the token-shift mix did not produce one"
            )
        hidden = jnp.tanh(matmul(x_w, self.time_decay_w1[...], self.dtype))
        offset = matmul(hidden, self.time_decay_w2[...], self.dtype).astype(jnp.float32)
        return -jnp.exp(self.time_decay[...].astype(jnp.float32) + offset).reshape(shape)


class Bonus(nnx.Module):
    """The bonus ``u [H, N]`` of the current token.

    Eagle 5.2 and Finch: ``time_faaaa [H, N]`` used as is. RWKV-5.1: ``time_first [H]``, one log-bonus per
    head, ``u = exp(time_first)`` for every channel of the head.
    """

    def __init__(self, value: Array, *, param_dtype: jnp.dtype = jnp.float32):
        self.per_head_log = jnp.ndim(value) == 1
        if self.per_head_log:
            self.time_first = param(jnp.asarray(value, param_dtype), ("heads",))
        else:
            self.time_faaaa = param(jnp.asarray(value, param_dtype), ("heads", "head_dim"))

    def __call__(self, head_size: int) -> Array:
        """Returns ``u [H, N]`` float32."""
        if self.per_head_log:
            u = jnp.exp(self.time_first[...].astype(jnp.float32))
            return jnp.broadcast_to(u[:, None], (u.shape[0], head_size))
        return self.time_faaaa[...].astype(jnp.float32)


class TimeMix(nnx.Module):
    """The attention-like block: token-shift mix, r/k/v(/g) projections, WKV-5/6, per-head norm, gate, output.

    Args:
      mix: StaticLerp (Eagle), DataDependentLerp (Finch) or Unmixed (no token shift); produces at least r, k,
        v (and g, w when used).
      decay: StaticDecay (Eagle) or LoraDecay (Finch).
      bonus: the bonus ``u``.
      receptance, key, value: ``Linear [C, A]``; gate: ``Linear [C, A]`` or None (5.1: no gate);
      output: ``Linear [A, C]``; ln_x: the per-head GroupNorm.
      head_size: ``N``; ``A = H N``.
      wkv_impl, chunk_size: the WKV form and its chunk length (``rwkv_jax.wkv.v6.wkv6``).
    """

    def __init__(
        self,
        *,
        mix: StaticLerp | DataDependentLerp | Unmixed,
        decay: StaticDecay | LoraDecay,
        bonus: Bonus,
        receptance: Linear,
        key: Linear,
        value: Linear,
        gate: Linear | None,
        output: Linear,
        ln_x: HeadGroupNorm,
        head_size: int,
        wkv_impl: Impl | str,
        chunk_size: int,
    ):
        self.mix, self.decay, self.bonus = mix, decay, bonus
        self.receptance, self.key, self.value, self.gate, self.output = receptance, key, value, gate, output
        self.ln_x = ln_x
        self.head_size = head_size
        self.wkv_impl = Impl.parse(wkv_impl)
        self.chunk_size = chunk_size

    def __call__(
        self, x: Array, prev: Array, wkv_state: Array, starts: Array | None = None
    ) -> tuple[Array, Array]:
        """``x [B, T, C]`` (ln1 output), ``prev [B, T, C]`` (x shifted), ``wkv_state [B, H, N, N]`` float32,
        ``starts [B, T]`` bool document starts or None.

        Returns the block output ``[B, T, C]`` in the compute dtype and the new WKV state.
        """
        batch, time, _ = x.shape
        mixed = self.mix(x, prev)
        heads_shape = (batch, time, -1, self.head_size)
        r = self.receptance(mixed["r"]).reshape(heads_shape)
        k = self.key(mixed["k"]).reshape(heads_shape)
        v = self.value(mixed["v"]).reshape(heads_shape)
        w_log = self.decay(mixed.get("w"), r.shape)
        u = self.bonus(self.head_size)
        y, wkv_state = wkv6(
            r, k, v, w_log, u, wkv_state, impl=self.wkv_impl, chunk_size=self.chunk_size, starts=starts
        )
        y = self.ln_x(y).astype(v.dtype)
        if self.gate is not None:
            y = y * jax.nn.silu(self.gate(mixed["g"]))
        return self.output(y), wkv_state


class ChannelMix(nnx.Module):
    """The feed-forward block: ``sigmoid(receptance(x_r)) * value(relu(key(x_k))^2)``.

    ``mix``: StaticLerp (or Unmixed: no token shift) producing k and r; key ``Linear [C, F]``, value
    ``Linear [F, C]``, receptance ``Linear [C, C]``.
    """

    def __init__(self, *, mix: StaticLerp | Unmixed, key: Linear, value: Linear, receptance: Linear):
        self.mix, self.key, self.value, self.receptance = mix, key, value, receptance

    def __call__(self, x: Array, prev: Array) -> Array:
        """``x``, ``prev``: ``[B, T, C]``. Returns ``[B, T, C]`` in the compute dtype."""
        mixed = self.mix(x, prev)
        hidden = jnp.square(jax.nn.relu(self.key(mixed["k"])))
        return jax.nn.sigmoid(self.receptance(mixed["r"])) * self.value(hidden)
