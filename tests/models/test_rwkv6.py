"""Eagle / Finch: float64 reference, prefill == decoding, WKV forms, bf16, official init, errors, grads."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwkv_jax.models.rwkv6 import init as rwkv6_init
from rwkv_jax.models.rwkv6.convert import to_state_dict
from rwkv_jax.models.rwkv6.layers import slot_offsets
from rwkv_jax.models.rwkv6.model import RWKV6, RWKV6Config, default_ffn_dim
from rwkv_jax.numerics import relative_error
from tests.models.contract import assert_matches_formula, assert_orthogonal_with_gain

VERSIONS = ("5.1", "5.2", "6")


def tiny_config(version: str, **overrides) -> RWKV6Config:
    settings = dict(vocab_size=64, n_layer=2, n_embd=32, head_size=8, ffn_dim=64, wkv_impl="recurrent")
    settings |= dict(time_mix_extra_dim=4, time_decay_extra_dim=8)
    return RWKV6Config(version=version, **(settings | overrides))


# ----------------------------------------------------------------------------------------------------------
# A float64 numpy Eagle/Finch on the official tensors, written from the paper's equations (arXiv 2404.05892)
# and BlinkDL's x052/x060 code: whole sequences from the empty state, the WKV state updated token by token.


def _layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _shift(x):
    return np.concatenate([np.zeros_like(x[:, :1]), x[:, :-1]], axis=1)


def _token_mix_inputs(w, p, xa, version):
    """The inputs of r, k, v (g) and for Finch w: Eagle lerp or Finch ddlerp."""
    prev = _shift(xa)
    if version != "6":
        names = "kvr" if version == "5.1" else "kvrg"
        return {
            n: xa * w[p + f"time_mix_{n}"].ravel() + prev * (1 - w[p + f"time_mix_{n}"].ravel())
            for n in names
        }
    delta = prev - xa
    hidden = np.tanh((xa + delta * w[p + "time_maa_x"].ravel()) @ w[p + "time_maa_w1"])
    hidden = hidden.reshape(*hidden.shape[:2], 5, -1)
    offsets = np.einsum("btsd,sdc->sbtc", hidden, w[p + "time_maa_w2"])
    return {n: xa + delta * (w[p + f"time_maa_{n}"].ravel() + offsets[s]) for s, n in enumerate("wkvrg")}


def _decay_and_bonus(w, p, inputs, version, head_size):
    """Per-step decay ``[B, T, A]`` (or broadcastable) and the bonus ``[A]``."""
    if version == "5.1":
        decay = np.repeat(np.exp(-np.exp(w[p + "time_decay"])), head_size)
        return decay, np.repeat(np.exp(w[p + "time_first"]), head_size)
    if version == "5.2":
        return np.exp(-np.exp(w[p + "time_decay"].ravel())), w[p + "time_faaaa"].ravel()
    lora = np.tanh(inputs["w"] @ w[p + "time_decay_w1"]) @ w[p + "time_decay_w2"]
    return np.exp(-np.exp(w[p + "time_decay"].ravel() + lora)), w[p + "time_faaaa"].ravel()


def eagle_finch_reference(tensors, tokens, version, head_size, group_norm_eps=64e-5):
    """Logits ``[B, T, V]`` float64 for ``tokens [B, T]`` from the empty state."""
    w = {name: np.asarray(t, np.float64) for name, t in tensors.items()}
    n_layer = 1 + max(int(name.split(".")[1]) for name in w if name.startswith("blocks."))
    x = _layer_norm(w["emb.weight"][tokens], w["blocks.0.ln0.weight"], w["blocks.0.ln0.bias"])
    batch, time = tokens.shape
    for i in range(n_layer):
        p = f"blocks.{i}.att."
        xa = _layer_norm(x, w[f"blocks.{i}.ln1.weight"], w[f"blocks.{i}.ln1.bias"])
        inputs = _token_mix_inputs(w, p, xa, version)
        decay, bonus = _decay_and_bonus(w, p, inputs, version, head_size)
        decay = np.broadcast_to(decay, (batch, time, decay.shape[-1])).reshape(batch, time, -1, head_size)
        bonus = bonus.reshape(-1, head_size)
        r, k, v = (
            inputs[n] @ w[p + f"{m}.weight"].T
            for n, m in zip("rkv", ("receptance", "key", "value"), strict=True)
        )
        r, k, v = (a.reshape(batch, time, -1, head_size) for a in (r, k, v))
        state = np.zeros((batch, r.shape[2], head_size, head_size))
        y = np.zeros_like(r)
        for t in range(time):
            kv = k[:, t, :, :, None] * v[:, t, :, None, :]
            y[:, t] = np.einsum("bhi,bhij->bhj", r[:, t], bonus[:, :, None] * kv + state)
            state = decay[:, t, :, :, None] * state + kv
        mean, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
        y = ((y - mean) / np.sqrt(var + group_norm_eps)).reshape(batch, time, -1)
        y = y * w[p + "ln_x.weight"] + w[p + "ln_x.bias"]
        if version != "5.1":
            gate = inputs["g"] @ w[p + "gate.weight"].T
            y = y * gate * _sigmoid(gate)
        x = x + y @ w[p + "output.weight"].T
        p = f"blocks.{i}.ffn."
        xf = _layer_norm(x, w[f"blocks.{i}.ln2.weight"], w[f"blocks.{i}.ln2.bias"])
        prev = _shift(xf)
        if version == "6":
            xk = xf + (prev - xf) * w[p + "time_maa_k"].ravel()
            xr = xf + (prev - xf) * w[p + "time_maa_r"].ravel()
        else:
            xk = xf * w[p + "time_mix_k"].ravel() + prev * (1 - w[p + "time_mix_k"].ravel())
            xr = xf * w[p + "time_mix_r"].ravel() + prev * (1 - w[p + "time_mix_r"].ravel())
        hidden = np.maximum(xk @ w[p + "key.weight"].T, 0) ** 2
        x = x + _sigmoid(xr @ w[p + "receptance.weight"].T) * (hidden @ w[p + "value.weight"].T)
    return _layer_norm(x, w["ln_out.weight"], w["ln_out.bias"]) @ w["head.weight"].T


# ----------------------------------------------------------------------------------------------------------


def randomize(model: RWKV6, seed: int) -> RWKV6:
    """Gives every parameter random values (the official init leaves many matrices zero)."""
    rng = np.random.default_rng(seed)
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape, name = variable.get_value().shape, str(path[-1])
        if name.startswith(("time_mix_", "time_maa_")) and len(shape) == 1:
            value = rng.uniform(0.0, 1.0, shape)
        elif name == "time_decay":
            value = rng.uniform(-4.0, 2.0, shape)  # decays from e^{-e^{-4}} (near 1) to e^{-e^2} (near 0)
        elif name in ("time_faaaa", "time_first"):
            value = rng.uniform(-1.0, 1.0, shape)
        elif name == "weight" and len(shape) == 1:
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name == "bias":
            value = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = shape[-2] if path[0] != "emb" else 1
            value = rng.standard_normal(shape) / math.sqrt(fan_in)
        variable.set_value(jnp.asarray(value, variable.get_value().dtype))
    return model


def random_model(config: RWKV6Config, seed: int = 0) -> RWKV6:
    return randomize(RWKV6(config, rngs=nnx.Rngs(seed)), seed)


def random_tokens(batch: int, steps: int, seed: int = 1, vocab_size: int = 64) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab_size, (batch, steps)), jnp.int32)


@pytest.mark.parametrize(
    ("version", "dim_att"), [("5.1", None), ("5.2", None), ("6", None), ("5.2", 48), ("6", 48)]
)
def test_float32_logits_match_float64_reference(version, dim_att):
    config = tiny_config(version, dim_att=dim_att)  # dim_att 48: six heads of 8 on a width of 32
    model = random_model(config)
    tokens = random_tokens(2, 9)
    logits, _ = model(tokens)
    assert logits.shape == (2, 9, config.vocab_size) and logits.dtype == jnp.float32
    expected = eagle_finch_reference(to_state_dict(model), np.asarray(tokens), version, config.head_size)
    assert relative_error(logits, expected) < 5e-6  # measured 6.8e-7 (2026-12)


@pytest.mark.parametrize("version", ["5.2", "6"])
def test_chunked_and_recurrent_wkv_forms_agree_in_the_model(version):
    recurrent = random_model(tiny_config(version))
    chunked = random_model(tiny_config(version, wkv_impl="chunked", chunk_size=4))
    tokens = random_tokens(2, 11)
    start = recurrent(tokens[:, :2])[1]
    logits_r, state_r = recurrent(tokens[:, 2:], start)
    logits_c, state_c = chunked(tokens[:, 2:], start)
    assert relative_error(logits_c, logits_r) < 2e-6  # measured 2.8e-7
    for a, b in zip(jax.tree.leaves(state_c), jax.tree.leaves(state_r), strict=True):
        assert relative_error(a, b) < 3e-6  # measured 3.1e-7


def test_state_is_float32_per_layer_with_batch_first():
    config = tiny_config("6")
    state = RWKV6(config, rngs=nnx.Rngs(0)).init_state(3)
    assert len(state) == config.n_layer
    for layer_state in state:
        assert layer_state.att_x.shape == layer_state.ffn_x.shape == (3, config.n_embd)
        assert layer_state.wkv.shape == (3, config.n_head, config.head_size, config.head_size)
        assert all(leaf.dtype == jnp.float32 for leaf in layer_state)


@pytest.mark.parametrize("version", ["5.2", "6"])
def test_bfloat16_compute_stays_close_with_float32_state(version):
    model32 = random_model(tiny_config(version))
    model16 = random_model(tiny_config(version, dtype="bfloat16"))
    tokens = random_tokens(2, 8)
    logits32, _ = model32(tokens)
    logits16, state16 = model16(tokens)
    assert logits16.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state16))
    assert relative_error(logits16, logits32) < 5e-2  # measured 6.9e-3 (bfloat16 compute)


# ----------------------------------------------------------------------------------------------------------
# The official initialisation, recomputed here from RWKV-LM's formulas (RWKV-v5/src/model.py, 86affd7).


def test_official_init_of_finch_matches_rwkv_lm_formulas():
    config = RWKV6Config(version="6", vocab_size=100, n_layer=3, n_embd=32, head_size=8, ffn_dim=96)
    model = RWKV6(config, rngs=nnx.Rngs(0))
    C, A, L, i = config.n_embd, config.dim_att, config.n_layer, np.arange(config.n_embd)
    for layer in range(L):
        att, ffn = model.blocks[layer].att, model.blocks[layer].ffn
        r01, r10 = layer / (L - 1), 1 - layer / L
        ddd = i / C
        for name, expected in {
            "x": 1 - ddd**r10,
            "w": 1 - ddd**r10,
            "k": 1 - ddd**r10,
            "v": 1 - (ddd**r10 + 0.3 * r01),
            "r": 1 - ddd ** (0.5 * r10),
            "g": 1 - ddd ** (0.5 * r10),
        }.items():
            assert_matches_formula(getattr(att.mix, f"time_maa_{name}"), expected)
        assert_matches_formula(ffn.mix.time_maa_k, 1 - ddd ** (r10**3))
        assert_matches_formula(ffn.mix.time_maa_r, 1 - ddd ** (r10**3))
        n = np.arange(A)
        assert_matches_formula(att.decay.time_decay, -6 + 5 * (n / (A - 1)) ** (0.7 + 1.3 * r01))
        zigzag = ((n + 1) % 3 - 1) * 0.1
        assert_matches_formula(
            att.bonus.time_faaaa, (r01 * (1 - n / (A - 1)) + zigzag).reshape(config.n_head, -1)
        )
        assert_matches_formula(att.ln_x.weight, np.full(A, ((1 + layer) / L) ** 0.7))
        assert not np.asarray(att.ln_x.bias[...]).any()
        for zero in (att.mix.time_maa_w1, att.decay.time_decay_w1, att.output.kernel, ffn.value.kernel):
            assert not np.asarray(zero[...]).any()
        assert not np.asarray(ffn.receptance.kernel[...]).any()
        for lora in (att.mix.time_maa_w2, att.decay.time_decay_w2):
            values = np.asarray(lora[...])
            assert np.abs(values).max() <= 0.01 and values.std() > 0.01 / 2 / 2  # U(-0.01, 0.01): std 0.0058
    block = model.blocks[1]
    for kernel, gain in ((block.att.receptance, 1.0), (block.att.value, 1.0), (block.ffn.key, 1.0)):
        assert_orthogonal_with_gain(kernel.kernel, gain)
    for kernel in (block.att.key, block.att.gate):
        assert_orthogonal_with_gain(kernel.kernel, 0.1)
    assert_orthogonal_with_gain(model.head.kernel, 0.5 * math.sqrt(100 / C))
    emb = np.asarray(model.emb.weight[...])
    assert np.abs(emb).max() <= 1e-4 and emb.std() > 0.5e-4 / 2
    assert model.blocks[0].ln0 is not None and model.blocks[1].ln0 is None


def test_official_init_of_eagle_matches_rwkv_lm_formulas():
    config = RWKV6Config(version="5.2", vocab_size=16, n_layer=4, n_embd=32, head_size=8)
    model = RWKV6(config, rngs=nnx.Rngs(0))
    C, A, L, H = config.n_embd, config.dim_att, config.n_layer, config.n_head
    ddd = np.arange(C) / C
    for layer in range(L):
        att, ffn = model.blocks[layer].att, model.blocks[layer].ffn
        r01, r10 = layer / (L - 1), 1 - layer / L
        assert_matches_formula(att.mix.time_mix_k, ddd**r10)
        assert_matches_formula(att.mix.time_mix_v, ddd**r10 + 0.3 * r01)
        assert_matches_formula(att.mix.time_mix_r, ddd ** (0.5 * r10))
        assert_matches_formula(att.mix.time_mix_g, ddd ** (0.5 * r10))
        assert_matches_formula(ffn.mix.time_mix_k, ddd**r10)
        assert_matches_formula(ffn.mix.time_mix_r, ddd**r10)
        n = np.arange(A)
        assert_matches_formula(
            att.decay.time_decay, (-6 + 5 * (n / (A - 1)) ** (0.7 + 1.3 * r01)).reshape(H, -1)
        )
        assert_matches_formula(
            att.bonus.time_faaaa, (r01 * (1 - n / (A - 1)) + ((n + 1) % 3 - 1) * 0.1).reshape(H, -1)
        )
    assert_orthogonal_with_gain(model.head.kernel, 0.5)  # V <= C: gain 0.5
    assert config.ffn_dim == 96 == default_ffn_dim(32)  # int(3.5 * 32) // 32 * 32


def test_official_init_of_rwkv5_1_has_per_head_decay_and_log_bonus():
    config = RWKV6Config(version="5.1", vocab_size=16, n_layer=2, n_embd=32, head_size=8)
    model = RWKV6(config, rngs=nnx.Rngs(0))
    H = config.n_head
    for layer in range(config.n_layer):
        att = model.blocks[layer].att
        h = np.arange(H)
        assert_matches_formula(
            att.decay.time_decay, -6 + 5 * (h / (H - 1)) ** (0.7 + 1.3 * layer / (config.n_layer - 1))
        )
        assert_matches_formula(att.bonus.time_first, np.full(H, -3.0))
        assert att.gate is None


def test_init_values_are_layer_dependent_formulas_not_copies():
    # One layer: RWKV-LM divides by n_layer - 1 = 0; we use ratio 0 (its first layer's value).
    assert rwkv6_init.layer_ratios(0, 1) == (0.0, 1.0)
    assert not np.allclose(rwkv6_init.decay_speed(16, 0, 4), rwkv6_init.decay_speed(16, 3, 4))


# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(version="7"), r"version must be one of"),
        (dict(version=6), r"version must be one of"),
        (dict(n_embd=30), r"dim_att \(30\) must be a multiple of head_size \(8\)"),
        (dict(n_layer=0), r"n_layer must be a positive integer"),
        (dict(n_embd="32"), r"n_embd must be a positive integer, got '32'"),
        (dict(head_size=True), r"head_size must be a positive integer"),
        (dict(group_norm_eps=0.0), r"group_norm_eps must be > 0"),
        (dict(dtype="int8"), r"dtype must be float32, bfloat16 or float16"),
        (dict(wkv_impl="fastest"), r"unknown WKV implementation"),
    ],
)
def test_invalid_config_raises_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(overrides.pop("version", "6"), **overrides)


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (np.array([[1, 64]]), r"token id 64 at position \(0, 1\) is outside the vocabulary \[0, 64\)"),
        (np.array([[-1, 2]]), r"token id -1 at position \(0, 0\)"),
        (np.array([1, 2]), r"shape \[B, T\]"),
        (np.zeros((1, 0), np.int32), r"T >= 1"),
        (np.array([[1.0, 2.0]]), r"integer ids, got dtype float"),
    ],
)
def test_invalid_tokens_raise_clear_errors(tokens, message):
    model = RWKV6(tiny_config("6"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=message):
        model(tokens)


def test_state_of_wrong_batch_or_depth_raises():
    model = RWKV6(tiny_config("5.2"), rngs=nnx.Rngs(0))
    tokens = random_tokens(2, 3)
    with pytest.raises(ValueError, match=r"state\[0\].att_x has shape \(3, 32\), expected \(2, 32\)"):
        model(tokens, model.init_state(3))
    with pytest.raises(ValueError, match=r"state has 1 layers, the model has 2"):
        model(tokens, model.init_state(2)[:1])


def test_bad_ids_under_jit_give_nan_logits_at_their_positions():
    model = random_model(tiny_config("6", n_layer=1))
    tokens = random_tokens(2, 5)
    forward = jax.jit(lambda model, tokens: model(tokens))  # the module is a pytree argument
    logits, _ = forward(model, tokens.at[1, 3].set(99))  # the range is checked only outside jit
    assert not np.isnan(logits[1, :3]).any() and np.isnan(logits[1, 3]).all()


@pytest.mark.parametrize("rows", [1, 3, 16, 17])
def test_ddlerp_slot_offsets_match_per_slot_products_forward_and_gradients(rows):
    """Few rows (one product over slot-masked rows) and many (one product per slot) give the float64
    per-slot products, forward and gradients."""
    slots, rank, channels = 5, 8, 48
    keys = jax.random.split(jax.random.key(3), 3)
    hidden = jax.random.normal(keys[0], (1, rows, slots * rank))
    w2 = jax.random.normal(keys[1], (slots, rank, channels))
    cotangent = jax.random.normal(keys[2], (slots, 1, rows, channels))

    def loss(hidden, w2, offsets_of):
        return jnp.sum(jnp.stack(offsets_of(hidden, w2)) * cotangent)

    def per_slot(hidden, w2):  # the formula, one product per slot
        return [hidden[..., s * rank : (s + 1) * rank] @ w2[s] for s in range(slots)]

    ours = slot_offsets(hidden, w2, jnp.float32)
    with jax.enable_x64():
        wide = [np.asarray(x, np.float64) for x in (hidden, w2)]
        reference = per_slot(*wide)
        reference_grads = jax.grad(loss, argnums=(0, 1))(*map(jnp.asarray, wide), per_slot)
    assert relative_error(jnp.stack(ours), jnp.stack(reference)) < 6e-7  # measured 5.5e-8 .. 6.8e-8
    grads = jax.grad(loss, argnums=(0, 1))(hidden, w2, lambda h, w: slot_offsets(h, w, jnp.float32))
    for ours_grad, reference_grad in zip(grads, reference_grads, strict=True):
        assert relative_error(ours_grad, reference_grad) < 1.3e-6  # measured 2.6e-8 .. 1.3e-7
