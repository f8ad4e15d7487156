"""RWKV-7: a float64 numpy transcription of the x070 inference math, the state contract, the WKV forms in the
model, bf16, the official initialisation, config errors and gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwkv_jax.models.rwkv7 import init as rwkv7_init
from rwkv_jax.models.rwkv7.convert import to_state_dict
from rwkv_jax.models.rwkv7.model import RWKV7, RWKV7Config
from rwkv_jax.numerics import relative_error
from tests.models.contract import assert_matches_formula


def tiny_config(**overrides) -> RWKV7Config:
    settings = dict(vocab_size=64, n_layer=3, n_embd=32, head_size=8, ffn_dim=64, wkv_impl="recurrent")
    settings |= dict(decay_lora=4, iclr_lora=4, value_lora=4, gate_lora=8)
    return RWKV7Config(**(settings | overrides))


def randomize(model: RWKV7, seed: int) -> RWKV7:
    """Random values for every parameter (the official init leaves the output and LoRA inputs zero)."""
    rng = np.random.default_rng(seed)
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape, name = variable.get_value().shape, str(path[-1])
        if name.startswith("x_"):
            value = rng.uniform(0.0, 1.0, shape)
        elif name == "weight" and len(shape) == 1:
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name in ("bias", "w0", "a0", "v0", "k_k", "k_a", "r_k") or len(shape) == 1:
            value = 0.5 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / math.sqrt(shape[-2] if path[0] != "emb" else 1)
        variable.set_value(jnp.asarray(value, variable.get_value().dtype))
    return model


def random_model(config: RWKV7Config, seed: int = 0) -> RWKV7:
    return randomize(RWKV7(config, rngs=nnx.Rngs(seed)), seed)


def random_tokens(batch: int, steps: int, seed: int = 1, vocab_size: int = 64) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab_size, (batch, steps)), jnp.int32)


# ----------------------------------------------------------------------------------------------------------
# A float64 transcription of RWKV-7 inference from the official tensors, one token at a time, one sequence
# (BlinkDL/RWKV-LM RWKV-v7/rwkv_v7_numpy.py in structure; written for these tests).


def _layer_norm(x, w, b, eps=1e-5):
    return (x - x.mean()) / np.sqrt(x.var() + eps) * w + b


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def rwkv7_reference(tensors: dict, tokens: np.ndarray, head_size: int) -> np.ndarray:
    t = {k: np.asarray(v, np.float64).squeeze() for k, v in tensors.items()}
    n_layer = 1 + max(int(k.split(".")[1]) for k in t if k.startswith("blocks."))
    C = t["emb.weight"].shape[1]
    H = C // head_size
    shift = np.zeros((n_layer, 2, C))
    states = np.zeros((n_layer, H, head_size, head_size))  # [value, key]
    out = []
    for token in tokens:
        x = _layer_norm(t["emb.weight"][token], t["blocks.0.ln0.weight"], t["blocks.0.ln0.bias"])
        v_first = None
        for i in range(n_layer):
            p = lambda name, i=i: t[f"blocks.{i}.{name}"]  # noqa: E731
            h = _layer_norm(x, p("ln1.weight"), p("ln1.bias"))
            xr, xw, xk, xv, xa, xg = (h + p(f"att.x_{n}") * (shift[i, 0] - h) for n in "rwkvag")
            shift[i, 0] = h
            r, k, v = p("att.receptance.weight") @ xr, p("att.key.weight") @ xk, p("att.value.weight") @ xv
            decay = np.exp(-np.exp(-0.5) * _sigmoid(p("att.w0") + np.tanh(xw @ p("att.w1")) @ p("att.w2")))
            if v_first is None:
                v_first = v
            else:
                v = v + (v_first - v) * _sigmoid(p("att.v0") + xv @ p("att.v1") @ p("att.v2"))
            a = _sigmoid(p("att.a0") + xa @ p("att.a1") @ p("att.a2"))
            g = _sigmoid(xg @ p("att.g1")) @ p("att.g2")
            kk = (k * p("att.k_k")).reshape(H, head_size)
            kk = kk / np.maximum(np.linalg.norm(kk, axis=1, keepdims=True), 1e-12)
            k = k * (1 + (a - 1) * p("att.k_a"))
            r_, w_, k_, v_, a_ = (z.reshape(H, head_size) for z in (r, decay, k, v, a))
            for head in range(H):
                s = states[i, head]
                s = s * w_[head][None, :] - np.outer(s @ kk[head], kk[head] * a_[head])
                states[i, head] = s + np.outer(v_[head], k_[head])
            y = np.einsum("hvk,hk->hv", states[i], r_)
            y = (y - y.mean(1, keepdims=True)) / np.sqrt(y.var(1, keepdims=True) + 64e-5)
            y = y.reshape(C) * p("att.ln_x.weight") + p("att.ln_x.bias")
            y += ((r_ * k_ * p("att.r_k").reshape(H, head_size)).sum(1, keepdims=True) * v_).reshape(C)
            x = x + p("att.output.weight") @ (y * g)
            h = _layer_norm(x, p("ln2.weight"), p("ln2.bias"))
            mixed = h + p("ffn.x_k") * (shift[i, 1] - h)
            shift[i, 1] = h
            x = x + p("ffn.value.weight") @ np.maximum(p("ffn.key.weight") @ mixed, 0) ** 2
        out.append(t["head.weight"] @ _layer_norm(x, t["ln_out.weight"], t["ln_out.bias"]))
    return np.stack(out)


def test_float32_logits_match_a_float64_transcription_of_the_official_math():
    config = tiny_config()
    model = random_model(config)
    tokens = random_tokens(1, 9)
    logits, _ = model(tokens)
    expected = rwkv7_reference(to_state_dict(model), np.asarray(tokens[0]), config.head_size)
    assert relative_error(logits[0], expected) < 3e-6  # measured 3.1e-7 (2026-12)


@pytest.mark.parametrize("form", [dict(wkv_impl="scan"), dict(wkv_impl="chunked", chunk_size=4)])
def test_parallel_and_recurrent_wkv_forms_agree_in_the_model(form):
    recurrent = random_model(tiny_config())
    parallel = random_model(tiny_config(**form))
    tokens = random_tokens(2, 11)
    start = recurrent(tokens[:, :2])[1]
    logits_r, state_r = recurrent(tokens[:, 2:], start)
    logits_p, state_p = parallel(tokens[:, 2:], start)
    assert relative_error(logits_p, logits_r) < 2e-6  # measured 2.7e-7
    for a, b in zip(jax.tree.leaves(state_p), jax.tree.leaves(state_r), strict=True):
        assert relative_error(a, b) < 2e-6  # measured 2.7e-7


def test_bfloat16_compute_stays_close_with_float32_state():
    tokens = random_tokens(2, 12)
    reference, _ = random_model(tiny_config())(tokens)
    logits, state = random_model(tiny_config(dtype="bfloat16"))(tokens)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state))
    assert relative_error(logits, reference) < 3e-2  # measured 5.6e-3 (bfloat16 compute)


def test_official_init_follows_rwkv_lm():
    config = RWKV7Config(vocab_size=100, n_layer=4, n_embd=64, head_size=16)
    model = RWKV7(config, rngs=nnx.Rngs(0))
    # RWKV-LM's suggested LoRA ranks (e.g. C = 768 gives 64, 64, 32, 128, the released 0.1B model's).
    assert [rwkv7_init.lora_rank(kind, 768) for kind in ("decay", "iclr", "value", "gate")] == [
        64,
        64,
        32,
        128,
    ]
    assert rwkv7_init.lora_rank("gate", 256) == 64  # round(2.5) == 2: Python's rounding, as the source
    assert (config.decay_lora, config.iclr_lora, config.value_lora, config.gate_lora) == (32, 32, 32, 32)
    first, last = model.blocks[0].att, model.blocks[3].att
    assert hasattr(first, "v0") and hasattr(last, "v0")  # in every block as RWKV-LM's (unused in block 0)
    for att in (first, last):
        for name in ("output", "w1", "a1", "v1", "g1"):
            value = getattr(att, name)
            value = value.kernel if hasattr(value, "kernel") else value
            assert not np.asarray(value[...]).any(), name
        w2 = np.asarray(att.w2[...], np.float64)  # [D, C], orthonormal rows times 0.1
        assert relative_error(w2 @ w2.T, 0.01 * np.eye(w2.shape[0])) <= 1e-6  # measured 2.1e-7
        np.testing.assert_allclose(np.asarray(att.r_k[...]), -0.04)
        np.testing.assert_allclose(np.asarray(att.k_a[...]), 1.02, rtol=1e-6)
    assert not np.asarray(model.blocks[2].ffn.value.kernel[...]).any()
    # x_r = 1 - ddd ** (0.2 (1 - l / L)): block 0 starts at 1 (ddd = 0) and falls; block 3 is flatter.
    ramp = np.arange(64) / 64
    assert_matches_formula(first.x_r, 1 - ramp**0.2)
    assert_matches_formula(last.x_r, 1 - ramp ** (0.2 * 0.25))
    # w0 = -6 + 6 (n / (C - 1)) ** (1 + r01 ** 0.3) + 0.5 + 2.5 zigzag; zigzag is -1 at each head's start.
    np.testing.assert_allclose(float(first.w0[...][0]), -6 + 0.5 - 2.5, rtol=1e-6)
    np.testing.assert_allclose(float(first.w0[...][-1]), 0.5 + 2.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(model.blocks[1].att.ln_x.weight[...]), (2 / 4) ** 0.7, rtol=1e-6)


@pytest.mark.parametrize(("n_embd", "gain"), [(16, 0.1 * math.sqrt(32 / 16)), (64, 0.1)])
def test_official_lora_w2_gain_grows_by_sqrt_rank_over_width_when_the_rank_exceeds_the_width(n_embd, gain):
    # RWKV-LM's ortho_init(x [D, C], 0.1) multiplies the gain by sqrt(D / C) when D > C; every rank is 32.
    config = RWKV7Config(vocab_size=32, n_layer=2, n_embd=n_embd, head_size=16)
    att = RWKV7(config, rngs=nnx.Rngs(0)).blocks[1].att
    for name in ("w2", "a2", "v2", "g2"):
        singular = np.linalg.svd(np.asarray(getattr(att, name)[...], np.float64), compute_uv=False)
        assert singular.shape == (min(32, n_embd),)
        assert relative_error(singular, np.full_like(singular, gain)) < 1e-6, name  # measured: 1.3e-7


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(n_layer=0), r"RWKV7Config.n_layer must be a positive integer"),
        (dict(n_embd=36), r"n_embd \(36\) must be a multiple of head_size \(8\)"),
        (dict(gate_lora=0), r"gate_lora must be a positive integer"),
        (dict(chunk_size=0), r"chunk_size must be a positive integer"),
        (dict(group_norm_eps=0.0), r"group_norm_eps must be > 0"),
        (dict(dtype="float64"), r"dtype must be float32, bfloat16 or float16"),
        (dict(wkv_impl="fast"), r"unknown WKV implementation 'fast'"),
    ],
)
def test_invalid_config_raises_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)
