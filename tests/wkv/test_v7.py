"""WKV-7 forms against the float64 reference: forward, gradients, the model's decay range, bf16, pieces."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwkv_jax.numerics import relative_error
from rwkv_jax.wkv import v7_chunked
from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.v7 import (
    PALLAS_CHUNK_SIZE,
    WKV7_FORMS,
    wkv7,
    wkv7_chunked,
    wkv7_recurrent,
    wkv7_reference,
    wkv7_scan,
)
from tests.wkv.helpers import chunk_programs, gradients, rel_err, seed_of, to_f64

FORMS = {
    "recurrent": wkv7_recurrent,
    "scan": wkv7_scan,
    "chunked1": functools.partial(wkv7_chunked, chunk_size=1),
    "chunked16": functools.partial(wkv7_chunked, chunk_size=16),
    "chunked32": functools.partial(wkv7_chunked, chunk_size=32),
}
# Jitted once per module: the cases of one shape share a compiled program.
FORWARD = {name: jax.jit(form) for name, form in FORMS.items()}
# RWKV-7's decay is exp(-exp(-0.5) sigmoid(z)): log decays in (-exp(-0.5), 0).
STRONGEST = -float(np.exp(-0.5))


def log_decays(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """'model': as the model makes them from a random pre-activation; 'near_one': 1 - 1e-6; 'strongest':
    the model's lower limit; 'mixed': each element one of the two extremes."""
    if kind == "model":
        return STRONGEST / (1 + np.exp(-3 * rng.normal(size=shape)))
    if kind == "near_one":
        return np.full(shape, -1e-6)
    if kind == "strongest":
        return np.full(shape, STRONGEST)
    if kind == "mixed":
        return np.where(rng.random(shape) < 0.5, STRONGEST, -1e-6)
    raise ValueError(kind)


def make_inputs(
    seed: int, shape: tuple[int, int, int, int], decay: str, dtype=jnp.float32, iclr: str = "model"
) -> tuple:
    """(r, k, v, w_log, a, b, state) as the model builds them: a = -kk, b = kk * iclr with kk a unit vector
    per head and iclr in (0, 1) ('model': a sigmoid of a normal; 'large': the model's limit, 1: the state
    forgets all it held along kk); r, k, v, a, b in ``dtype``; random state."""
    rng = np.random.default_rng(seed)
    batch, _, heads, size = shape
    r, k, v = (rng.normal(size=shape) for _ in range(3))
    kk = rng.normal(size=shape)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    iclr = 1 / (1 + np.exp(-rng.normal(size=shape))) if iclr == "model" else np.ones(shape)
    w_log = log_decays(rng, shape, decay)
    state = rng.normal(size=(batch, heads, size, size))
    r, k, v, a, b = (jnp.asarray(x, dtype) for x in (r, k, v, -kk, kk * iclr))
    return r, k, v, jnp.asarray(w_log, jnp.float32), a, b, jnp.asarray(state, jnp.float32)


def explicit_loop(r, k, v, w_log, a, b, state):
    """The recurrence written out per head with numpy matrices, float64."""
    r, k, v, w_log, a, b, s = (np.asarray(x, np.float64) for x in (r, k, v, w_log, a, b, state))
    batch, length, heads, _ = r.shape
    s, y = s.copy(), np.zeros_like(v)
    for i in range(batch):
        for h in range(heads):
            for t in range(length):
                transition = np.diag(np.exp(w_log[i, t, h])) + np.outer(a[i, t, h], b[i, t, h])
                s[i, h] = s[i, h] @ transition + np.outer(v[i, t, h], k[i, t, h])
                y[i, t, h] = s[i, h] @ r[i, t, h]
    return y, s


def test_reference_equals_the_explicit_loop(request):
    args = make_inputs(seed_of(request), (2, 7, 2, 4), "model")
    y, s = wkv7_reference(*args)
    y_loop, s_loop = explicit_loop(*args)
    assert relative_error(y, y_loop) <= 1e-15  # measured: 1.5e-16 (float64)
    assert relative_error(s, s_loop) <= 1e-15  # measured: 1.1e-16 (float64)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("decay", ["model", "near_one", "strongest", "mixed"])
@pytest.mark.parametrize("length", [1, 45])
def test_float32_forward_matches_reference(request, form, decay, length):
    args = make_inputs(seed_of(request), (2, length, 2, 16), decay)
    y_ref, s_ref = wkv7_reference(*to_f64(args))
    y, s = FORWARD[form](*args)
    assert y.dtype == jnp.float32 and s.dtype == jnp.float32
    assert rel_err(y, y_ref) <= 2e-6  # measured <= 2.5e-7 (2026-12)
    assert rel_err(s, s_ref) <= 3e-6  # measured <= 3.0e-7


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("decay", ["model", "near_one", "mixed"])
def test_float32_gradients_match_reference(request, form, decay):
    seed = seed_of(request)
    args = make_inputs(seed, (1, 45, 2, 16), decay)
    grads_ref = gradients(wkv7_reference, to_f64(args), seed)
    grads = gradients(FORMS[form], args, seed)
    for name, grad, ref in zip((*"rkv", "w_log", "a", "b", "state"), grads, grads_ref, strict=True):
        assert rel_err(grad, ref) <= 4e-6, name  # measured <= 4.2e-7


@pytest.mark.parametrize("form", FORMS)
def test_bfloat16_inputs_accumulate_in_float32(request, form):
    args = make_inputs(seed_of(request), (1, 70, 2, 16), "model", dtype=jnp.bfloat16)
    y_ref, s_ref = wkv7_reference(*to_f64(args))
    y, s = FORWARD[form](*args)
    assert y.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    assert rel_err(y, y_ref) <= 5e-3  # measured 1.7e-3 (bfloat16 output)
    assert rel_err(s, s_ref) <= 6e-7  # measured 7.5e-8 (a float32 state)


@pytest.mark.parametrize("form", ["recurrent", "chunked16"])
@pytest.mark.parametrize("decay", ["near_one", "mixed"])
def test_forward_and_gradients_are_accurate_on_long_sequences(request, form, decay):
    seed = seed_of(request)
    args = make_inputs(seed, (1, 2048, 1, 16), decay)
    y_ref, s_ref = wkv7_reference(*to_f64(args))
    y, s = FORMS[form](*args)
    assert rel_err(y, y_ref) <= 4e-6  # measured 4.5e-7
    assert rel_err(s, s_ref) <= 4e-6  # measured 4.1e-7
    grads_ref = gradients(wkv7_reference, to_f64(args), seed)
    grads = gradients(FORMS[form], args, seed)
    for name, grad, ref in zip((*"rkv", "w_log", "a", "b", "state"), grads, grads_ref, strict=True):
        assert rel_err(grad, ref) <= 6e-6, name  # measured <= 7.8e-7


@pytest.mark.parametrize("form", ["recurrent", "scan", "chunked16"])
def test_two_pieces_with_carried_state_equal_one_call(request, form):
    *inputs, state = make_inputs(seed_of(request), (2, 30, 2, 8), "model")
    y_all, s_all = FORMS[form](*inputs, state)
    cut = 13
    y1, s1 = FORMS[form](*(x[:, :cut] for x in inputs), state)
    y2, s2 = FORMS[form](*(x[:, cut:] for x in inputs), s1)
    assert rel_err(jnp.concatenate([y1, y2], axis=1), y_all) <= 1e-6  # measured 1.5e-7
    assert rel_err(s2, s_all) <= 1e-6  # measured 1.5e-7


def test_dispatcher_runs_each_form(request):
    args = make_inputs(seed_of(request), (1, 9, 2, 8), "model")
    y_ref, _ = wkv7_reference(*to_f64(args))
    for impl, chunk_size in (("recurrent", 4), ("scan", 4), ("chunked", 4), ("auto", 4), ("pallas", 16)):
        assert rel_err(wkv7(*args, impl=impl, chunk_size=chunk_size)[0], y_ref) <= 1e-6, impl  # 1.2e-7
    y, s = wkv7(*args[:6])  # no state: starts from zeros
    assert rel_err(y, wkv7_reference(*to_f64(args[:6]))[0]) <= 1e-6 and s.shape == (1, 2, 8, 8)  # 1.3e-7


def test_forms_without_a_chunk_size_run_their_own_default(request, monkeypatch):
    """The chunked training form's default chunk (16) does not reach the Pallas form (32 per grid step)."""
    args = make_inputs(seed_of(request), (1, 4, 1, 4), "model")
    chunk_sizes = {}
    for impl in (Impl.CHUNKED, Impl.PALLAS):

        def spy(*inputs, chunk_size, impl=impl):
            chunk_sizes[impl] = chunk_size
            return inputs[2], inputs[-1]

        monkeypatch.setitem(WKV7_FORMS.forms, impl, spy)
        wkv7(*args, impl=impl)
    assert chunk_sizes == {Impl.CHUNKED: v7_chunked.DEFAULT_CHUNK_SIZE, Impl.PALLAS: PALLAS_CHUNK_SIZE}
    assert (v7_chunked.DEFAULT_CHUNK_SIZE, PALLAS_CHUNK_SIZE) == (16, 32)


def test_chunked_rejects_decays_too_strong_for_its_chunk_size_and_bad_chunk_sizes(request):
    *inputs, state = make_inputs(seed_of(request), (1, 8, 1, 8), "model")
    inputs[3] = jnp.full_like(inputs[3], -5.0)  # 16 steps of -5: exp(80) would overflow the factors
    with pytest.raises(ValueError, match=r"chunk_size \* max\(-w_log\) <= 60 \(got 16 \* 5\)"):
        wkv7(*inputs, state, impl="chunked", chunk_size=16)
    assert np.isfinite(wkv7(*inputs, state, impl="chunked", chunk_size=8)[0]).all()  # 8 * 5 = 40 is fine
    for chunk_size in (0, 2.0, True):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            wkv7_chunked(*inputs, state, chunk_size=chunk_size)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "b": a["b"][:, :-1]}, "b must have r's shape"),
        (lambda a: {**a, "r": a["r"][0]}, "r must be"),
        (lambda a: {**a, "state": a["state"][..., :-1]}, "state must be"),
        (lambda a: {**a, "w_log": -a["w_log"]}, "must be <= 0"),
        (lambda a: {**a, "a": a["a"].astype(jnp.int32)}, "a must be a float"),
    ],
)
def test_dispatcher_rejects_bad_inputs_with_a_clear_error(request, change, message):
    names = ("r", "k", "v", "w_log", "a", "b", "state")
    args = dict(zip(names, make_inputs(seed_of(request), (1, 4, 2, 8), "model"), strict=True))
    with pytest.raises(ValueError, match=message):
        wkv7(**change(args))


# The chunked form's hand-written backward. Measured errors (relative, over the tensor; the largest over the
# parametrised cases, XLA:CPU, jax 0.10.2) are written beside each bound; bounds are at most 10x them.
GRAD_NAMES = (*"rkv", "w_log", "a", "b", "state")
CHUNKED_SIZES = [1, 16, 32]


def chunk_inputs(seed: int, shape: tuple[int, int, int, int], decay: str, dtype) -> tuple:
    """One chunk's (r, k, v, w, a, b) ``[B, H, L, N]``, the start state ``[B, H, key, value]``, and random
    cotangents of y and of the end state, as the chunk loop passes them."""
    batch, length, heads, size = shape
    *inputs, state = make_inputs(seed, shape, decay)
    inputs = [jnp.asarray(x, dtype).transpose(0, 2, 1, 3) for x in inputs]
    rng = np.random.default_rng(seed + 1)
    dy = jnp.asarray(rng.normal(size=(batch, heads, length, size)), dtype)
    d_end = jnp.asarray(rng.normal(size=(batch, heads, size, size)), dtype)
    return inputs, jnp.asarray(state, dtype).swapaxes(-1, -2), dy, d_end


# Jitted once per module, the cotangents as arguments (tests/wkv/helpers.py).
CHUNK_FORWARD, CHUNK_BACKWARD, CHUNK_VJP = chunk_programs(v7_chunked)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("decay", ["strongest", "near_one", "mixed"])
@pytest.mark.parametrize("chunk_size", CHUNKED_SIZES)
def test_chunk_backward_equals_autodiff_of_the_chunk_forward(request, dtype, decay, chunk_size):
    inputs, state, dy, d_end = chunk_inputs(seed_of(request), (2, chunk_size, 2, 16), decay, dtype)
    expected = CHUNK_VJP((*inputs, state), (dy, d_end))
    end = CHUNK_FORWARD(*inputs, state)[1]
    grads = CHUNK_BACKWARD(*inputs, dy, state, end, d_end)
    bound = {"float32": 4e-6, "float64": 7e-15}[dtype]  # measured: 5.7e-7, 7.2e-16
    for name, grad, ref in zip(GRAD_NAMES, grads, expected, strict=True):
        assert relative_error(grad, ref) <= bound, name


def chunked_errors(args: tuple, seed: int, chunk_size: int) -> dict[str, tuple[float, float]]:
    """Per gradient: (relative error of the chunked form's gradient against the float64 reference's,
    against JAX's autodiff of the float32 recurrent form)."""
    grads = gradients(FORMS[f"chunked{chunk_size}"], args, seed)
    grads_ref = gradients(wkv7_reference, to_f64(args), seed)
    grads_scan = gradients(wkv7_recurrent, args, seed)
    to_ref = (relative_error(grad, ref) for grad, ref in zip(grads, grads_ref, strict=True))
    to_scan = (relative_error(grad, scan) for grad, scan in zip(grads, grads_scan, strict=True))
    return dict(zip(GRAD_NAMES, zip(to_ref, to_scan, strict=True), strict=True))


@pytest.mark.parametrize("iclr", ["model", "large"])
@pytest.mark.parametrize("decay", ["model", "strongest", "near_one", "mixed"])
@pytest.mark.parametrize("chunk_size", CHUNKED_SIZES)
def test_chunked_gradients_match_float64_and_autodiff_of_the_recurrent_form(request, iclr, decay, chunk_size):
    seed = seed_of(request)
    args = make_inputs(seed, (2, 100, 2, 16), decay, iclr=iclr)  # 100: not a multiple of 16 or 32
    for name, (to_f64_ref, to_scan) in chunked_errors(args, seed, chunk_size).items():
        assert to_f64_ref <= 5e-6, name  # measured: 6.3e-7
        assert to_scan <= 6e-6, name  # measured: 6.6e-7


@pytest.mark.parametrize("decay", ["strongest", "near_one", "mixed"])
@pytest.mark.parametrize("chunk_size", [16, 32])
def test_chunked_is_accurate_on_long_sequences(request, decay, chunk_size):
    seed = seed_of(request)
    args = make_inputs(seed, (1, 1000, 2, 32), decay, iclr="large")  # 1000: not a multiple of the chunk
    y_ref, s_ref = wkv7_reference(*to_f64(args))
    y, s = wkv7_chunked(*args, chunk_size=chunk_size)
    assert relative_error(y, y_ref) <= 2e-6  # measured: 2.5e-7
    assert relative_error(s, s_ref) <= 2e-6  # measured: 2.3e-7
    for name, (to_f64_ref, to_scan) in chunked_errors(args, seed, chunk_size).items():
        assert to_f64_ref <= 4e-6, name  # measured: 4.7e-7
        assert to_scan <= 1e-5, name  # measured: 1.2e-6


@pytest.mark.parametrize("chunk_size", CHUNKED_SIZES)
def test_chunked_gradients_of_bfloat16_inputs_are_bfloat16_and_match_float64(request, chunk_size):
    seed = seed_of(request)
    args = make_inputs(seed, (1, 70, 2, 16), "model", dtype=jnp.bfloat16)
    grads = gradients(FORMS[f"chunked{chunk_size}"], args, seed)
    grads_ref = gradients(wkv7_reference, to_f64(args), seed)
    for name, x, grad, ref in zip(GRAD_NAMES, args, grads, grads_ref, strict=True):
        assert grad.dtype == x.dtype, name
        assert relative_error(grad, ref) <= 2e-2, name  # measured: 2.5e-3
