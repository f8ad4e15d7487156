"""RWKV-4 model: float64 reference, prefill == decoding, bf16, official init, errors, gradients, jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwkv_jax.models.rwkv4 import init
from rwkv_jax.models.rwkv4.convert import to_state_dict
from rwkv_jax.models.rwkv4.model import RWKV4, RWKV4Config
from rwkv_jax.numerics import relative_error
from tests.models.contract import assert_matches_formula, assert_orthogonal_with_gain, jitted

CONFIG = RWKV4Config(vocab_size=64, n_layer=2, n_embd=32, ffn_dim=64)


# ----------------------------------------------------------------------------------------------------------
# A float64 numpy RWKV-4 on the official tensors, from the paper's equations, one token at a time with the
# plain (unstabilised) WKV sums, which float64 holds without overflow at test sizes.


def _layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _shift(x):
    return np.concatenate([np.zeros_like(x[:, :1]), x[:, :-1]], axis=1)


def _lerp(x, prev, ratio):
    ratio = ratio.reshape(-1)
    return x * ratio + prev * (1 - ratio)


def rwkv4_reference(tensors: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """Logits ``[B, T, V]`` float64 for ``tokens [B, T]`` from the empty state."""
    w = {name: np.asarray(t, np.float64) for name, t in tensors.items()}
    n_layer = 1 + max(int(name.split(".")[1]) for name in w if name.startswith("blocks."))
    x = _layer_norm(w["emb.weight"][tokens], w["blocks.0.ln0.weight"], w["blocks.0.ln0.bias"])
    for i in range(n_layer):
        p = f"blocks.{i}."
        xa = _layer_norm(x, w[p + "ln1.weight"], w[p + "ln1.bias"])
        k = _lerp(xa, _shift(xa), w[p + "att.time_mix_k"]) @ w[p + "att.key.weight"].T
        v = _lerp(xa, _shift(xa), w[p + "att.time_mix_v"]) @ w[p + "att.value.weight"].T
        r = _lerp(xa, _shift(xa), w[p + "att.time_mix_r"]) @ w[p + "att.receptance.weight"].T
        decay, bonus = np.exp(-np.exp(w[p + "att.time_decay"])), np.exp(w[p + "att.time_first"])
        num, den, wkv = np.zeros_like(k[:, 0]), np.zeros_like(k[:, 0]), np.zeros_like(k)
        for t in range(k.shape[1]):
            e_k = np.exp(k[:, t])
            wkv[:, t] = (num + bonus * e_k * v[:, t]) / (den + bonus * e_k)
            num, den = decay * num + e_k * v[:, t], decay * den + e_k
        x = x + (_sigmoid(r) * wkv) @ w[p + "att.output.weight"].T
        xf = _layer_norm(x, w[p + "ln2.weight"], w[p + "ln2.bias"])
        hidden = (
            np.maximum(_lerp(xf, _shift(xf), w[p + "ffn.time_mix_k"]) @ w[p + "ffn.key.weight"].T, 0) ** 2
        )
        gate = _sigmoid(_lerp(xf, _shift(xf), w[p + "ffn.time_mix_r"]) @ w[p + "ffn.receptance.weight"].T)
        x = x + gate * (hidden @ w[p + "ffn.value.weight"].T)
    return _layer_norm(x, w["ln_out.weight"], w["ln_out.bias"]) @ w["head.weight"].T


# ----------------------------------------------------------------------------------------------------------


def randomize(model: RWKV4, seed: int) -> RWKV4:
    """Gives every parameter random values (the official init leaves many matrices zero)."""
    rng = np.random.default_rng(seed)
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape, name = variable.get_value().shape, path[-1]
        if name.startswith("time_mix"):
            value = rng.uniform(0.0, 1.0, shape)
        elif name == "time_decay":
            value = rng.uniform(-4.0, 2.0, shape)  # decays from e^{-e^{-4}} (near 1) to e^{-e^2} (near 0)
        elif name == "weight" and len(shape) == 1:
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        else:
            fan_in = shape[0] if len(shape) == 2 and path[0] != "emb" else 1
            value = rng.standard_normal(shape) / math.sqrt(fan_in)
        variable.set_value(jnp.asarray(value, variable.get_value().dtype))
    return model


def random_model(config: RWKV4Config = CONFIG, seed: int = 0) -> RWKV4:
    return randomize(RWKV4(config, rngs=nnx.Rngs(seed)), seed)


def random_tokens(batch: int, steps: int, seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, CONFIG.vocab_size, (batch, steps)), jnp.int32)


def test_float32_logits_match_float64_reference():
    model = random_model()
    tokens = random_tokens(2, 12)
    logits, _ = jitted(model)(tokens)
    assert logits.shape == (2, 12, CONFIG.vocab_size) and logits.dtype == jnp.float32
    expected = rwkv4_reference(to_state_dict(model), np.asarray(tokens))
    assert relative_error(logits, expected) < 2e-6  # measured 1.9e-7 (2026-12)


@pytest.fixture(scope="module")
def recurrent_result():
    return jitted(random_model(RWKV4Config(64, 2, 32, 64, wkv_impl="recurrent")))(random_tokens(2, 10))


@pytest.mark.parametrize("impl", ["scan", "pallas"])  # pallas: interpret mode on CPU
def test_wkv_form_is_chosen_by_config_and_agrees_with_recurrent(impl, recurrent_result):
    other = random_model(RWKV4Config(64, 2, 32, 64, wkv_impl=impl))
    assert other.blocks[0].att.wkv_impl.value == impl
    expected, expected_state = recurrent_result
    logits, state = jitted(other)(random_tokens(2, 10))
    assert relative_error(logits, expected) < 1e-6  # measured 1.5e-7
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(expected_state), strict=True):
        assert relative_error(a, b) < 1e-6  # measured 1.3e-7


def test_state_is_float32_with_batch_first():
    model = random_model()
    state = model.init_state(3)
    assert len(state) == CONFIG.n_layer
    for leaf in jax.tree.leaves(state):
        assert leaf.shape == (3, CONFIG.n_embd) and leaf.dtype == jnp.float32


def test_bfloat16_compute_stays_close_with_float32_state():
    model32 = random_model()
    model16 = randomize(RWKV4(RWKV4Config(64, 2, 32, 64, dtype="bfloat16"), rngs=nnx.Rngs(0)), 0)
    tokens = random_tokens(2, 12)
    logits32, _ = jitted(model32)(tokens)
    logits16, state16 = jitted(model16)(tokens)
    assert logits16.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state16))
    assert relative_error(logits16, logits32) < 5e-2  # measured 6.0e-3 (bfloat16 compute)


def test_official_init_matches_rwkv_lm_formulas():
    config = RWKV4Config(vocab_size=100, n_layer=3, n_embd=16, ffn_dim=64)
    model = RWKV4(config, rngs=nnx.Rngs(0))
    C, L = config.n_embd, config.n_layer
    h = np.arange(C)
    for layer in (0, L - 1):
        att, ffn = model.blocks[layer].att, model.blocks[layer].ffn
        ratio_0_to_1, ratio_1_to_almost0 = layer / (L - 1), 1 - layer / L
        decay = -5 + 8 * (h / (C - 1)) ** (0.7 + 1.3 * ratio_0_to_1)
        assert_matches_formula(att.time_decay, decay)
        zigzag = np.array([0.5 * ((i + 1) % 3 - 1) for i in range(C)])
        assert_matches_formula(att.time_first, np.log(0.3) + zigzag)
        ddd = h / C
        assert_matches_formula(att.time_mix_k, ddd**ratio_1_to_almost0)
        assert_matches_formula(att.time_mix_v, ddd**ratio_1_to_almost0 + 0.3 * ratio_0_to_1)
        assert_matches_formula(att.time_mix_r, ddd ** (0.5 * ratio_1_to_almost0))
        assert_matches_formula(ffn.time_mix_k, ddd**ratio_1_to_almost0)
        for zero in (att.key, att.receptance, att.output, ffn.receptance, ffn.value):
            assert not np.asarray(zero.kernel[...]).any()

    block = model.blocks[1]
    assert_orthogonal_with_gain(block.att.value.kernel, 1.0)
    assert_orthogonal_with_gain(block.ffn.key.kernel, 2.0)  # gain sqrt(64/16)
    head_gain = 0.5 * math.sqrt(config.vocab_size / C)
    assert_orthogonal_with_gain(model.head.kernel, head_gain)
    emb = np.asarray(model.emb.weight[...])
    assert np.abs(emb).max() <= init.EMBEDDING_INIT_SCALE and emb.std() > 0.5 * init.EMBEDDING_INIT_SCALE / 2
    assert model.blocks[0].ln0 is not None and model.blocks[1].ln0 is None


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
    with pytest.raises(ValueError, match=message):
        random_model()(tokens)


def test_out_of_range_token_under_jit_gives_nan_logits():
    graphdef, params = nnx.split(random_model())
    logits = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t)[0])(params, jnp.array([[1, 99]], jnp.int32))
    assert not np.isnan(logits[0, 0]).any() and np.isnan(logits[0, 1]).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_embd=0), "n_embd must be a positive integer"),
        (dict(n_layer=2.0), "n_layer must be a positive integer"),
        (dict(ffn_dim=-4), "ffn_dim must be a positive integer"),
        (dict(dtype="float64"), "dtype must be float32, bfloat16 or float16"),
        (dict(param_dtype="int8"), "param_dtype must be float32, bfloat16 or float16"),
        (dict(wkv_impl="fastest"), "unknown WKV implementation 'fastest'"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps must be > 0"),
    ],
)
def test_bad_config_raises_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RWKV4Config(**{**dict(vocab_size=64, n_layer=2, n_embd=32), **kwargs})


def test_config_defaults_ffn_to_four_times_width():
    assert RWKV4Config(vocab_size=10, n_layer=1, n_embd=8).ffn_dim == 32


def test_bad_state_raises_clear_error():
    model = random_model()
    state = model.init_state(2)
    with pytest.raises(ValueError, match="state has 1 layers, the model has 2"):
        model(random_tokens(2, 3), state[:1])
    with pytest.raises(ValueError, match=r"state\[0\].att_x has shape \(2, 32\), expected \(3, 32\)"):
        model(random_tokens(3, 3), state)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.init_state(0)
