"""WKV-5/6 forms against the float64 reference: forward, gradients, extreme decays, bf16, chunks, dispatch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwkv_jax.wkv import v6_chunked
from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.v6 import wkv6, wkv6_chunked, wkv6_recurrent, wkv6_reference, wkv6_scan
from tests.wkv.helpers import chunk_programs, gradients, rel_err, seed_of, to_f64

FORMS = {
    "recurrent": wkv6_recurrent,
    "scan": wkv6_scan,
    "chunked2": functools.partial(wkv6_chunked, chunk_size=2),
    "chunked16": functools.partial(wkv6_chunked, chunk_size=16),
    "chunked64": functools.partial(wkv6_chunked, chunk_size=64),
}
# Jitted once per module: the cases of one shape share a compiled program.
FORWARD = {name: jax.jit(form) for name, form in FORMS.items()}
# Decays span what the models produce: -exp(5) (decay ~e^-148) to -1e-6 (decay 1 - 1e-6).
STRONGEST, WEAKEST = -float(np.exp(5.0)), -1e-6


def log_decays(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """float32 w_log of one kind: 'mixed', 'extremes', 'strong_then_weak', 'eagle', 'some_zero' or 'weak'."""
    if kind == "mixed":  # log-uniform over the whole range, independently per element
        return -np.exp(rng.uniform(np.log(-WEAKEST), 5.0, size=shape)).astype(np.float32)
    if kind == "extremes":  # each element either extreme: strong and weak decays mixed within every chunk
        return np.where(rng.random(shape) < 0.5, STRONGEST, WEAKEST).astype(np.float32)
    if kind == "strong_then_weak":  # long cumulative sums followed by tiny steps (precision of the exponents)
        strong = np.arange(shape[1])[None, :, None, None] < shape[1] // 3
        return np.broadcast_to(np.where(strong, STRONGEST, WEAKEST), shape).astype(np.float32)
    if kind == "eagle":  # constant in time (RWKV-5), one value per channel
        per_channel = -np.exp(rng.uniform(np.log(-WEAKEST), 5.0, size=shape[2:]))
        return np.broadcast_to(per_channel, shape).astype(np.float32)
    if kind == "some_zero":  # decays of exactly 0 (w_log = -inf) among mixed ones
        mixed = log_decays(rng, shape, "mixed")
        return np.where(rng.random(shape) < 0.1, -np.inf, mixed).astype(np.float32)
    if kind == "weak":
        return np.full(shape, WEAKEST, np.float32)
    raise ValueError(kind)


def make_inputs(seed: int, shape: tuple[int, int, int, int], decay: str, dtype=jnp.float32) -> tuple:
    """(r, k, v, w_log, u, state) with r, k, v in ``dtype`` and the rest float32, random nonzero state."""
    rng = np.random.default_rng(seed)
    batch, _, heads, size = shape
    r, k, v = (jnp.asarray(rng.normal(size=shape), dtype) for _ in range(3))
    w_log = jnp.asarray(log_decays(rng, shape, decay))
    u = jnp.asarray(rng.normal(size=(heads, size)), jnp.float32)
    state = jnp.asarray(rng.normal(size=(batch, heads, size, size)), jnp.float32)
    return r, k, v, w_log, u, state


def explicit_sum(r, k, v, w_log, u, state):
    """The closed form, token by token without a recurrence: S_t = prod(decays) S_0 + sum of decayed k v^T."""
    r, k, v, w_log, u, state = (np.asarray(x, np.float64) for x in (r, k, v, w_log, u, state))
    y = np.zeros_like(v)
    for t in range(r.shape[1]):
        before = np.exp(w_log[:, :t].sum(axis=1))[..., None] * state
        for s in range(t):  # token s decayed by the steps strictly between s and t
            decay = np.exp(w_log[:, s + 1 : t].sum(axis=1))
            before += decay[..., None] * k[:, s, ..., None] * v[:, s, :, None, :]
        now = u[..., None] * k[:, t, ..., None] * v[:, t, :, None, :]
        y[:, t] = np.einsum("bhi,bhij->bhj", r[:, t], now + before)
    return y


def test_reference_equals_the_explicit_sum(request):
    args = make_inputs(seed_of(request), (2, 6, 2, 3), "mixed")
    y, _ = wkv6_reference(*args)
    assert rel_err(y, explicit_sum(*args)) <= 1e-15  # measured: 1.3e-16 (float64)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("decay", ["mixed", "extremes", "strong_then_weak", "eagle"])
@pytest.mark.parametrize("length", [1, 45])
def test_float32_forward_matches_reference(request, form, decay, length):
    args = make_inputs(seed_of(request), (2, length, 2, 16), decay)
    y_ref, s_ref = wkv6_reference(*to_f64(args))
    y, s = FORWARD[form](*args)
    assert y.dtype == jnp.float32 and s.dtype == jnp.float32
    assert rel_err(y, y_ref) <= 2e-6  # measured <= 2.8e-7 (2026-12)
    assert rel_err(s, s_ref) <= 4e-6  # measured <= 4.5e-7


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("decay", ["mixed", "extremes", "some_zero", "strong_then_weak"])
def test_float32_gradients_match_reference(request, form, decay):
    seed = seed_of(request)
    args = make_inputs(seed, (1, 45, 2, 16), decay)
    wrt = tuple(range(6))  # r, k, v, w_log, u, initial state
    grads_ref = gradients(wkv6_reference, to_f64(args), seed)
    grads = gradients(FORMS[form], args, seed)
    for i in wrt:
        assert rel_err(grads[i], grads_ref[i]) <= 5e-6, f"gradient {i}"  # measured <= 6.0e-7


@pytest.mark.parametrize("form", FORMS)
def test_bfloat16_inputs_accumulate_in_float32(request, form):
    args = make_inputs(seed_of(request), (1, 70, 2, 16), "mixed", dtype=jnp.bfloat16)
    y_ref, s_ref = wkv6_reference(*to_f64(args))
    y, s = FORWARD[form](*args)
    assert y.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    assert rel_err(y, y_ref) <= 5e-3  # measured 1.7e-3 (bfloat16 output)
    assert rel_err(s, s_ref) <= 5e-7  # measured 6.6e-8 (a float32 state)


@pytest.mark.parametrize("decay", ["weak", "mixed"])
def test_chunked_is_accurate_on_long_sequences(request, decay):
    args = make_inputs(seed_of(request), (1, 1024, 1, 8), decay)
    y_ref, s_ref = wkv6_reference(*to_f64(args))
    y, s = jax.jit(wkv6_chunked)(*args)
    assert rel_err(y, y_ref) <= 2e-6  # measured 2.0e-7
    assert rel_err(s, s_ref) <= 2e-6  # measured 2.7e-7


@pytest.mark.parametrize("decay", ["extremes", "strong_then_weak", "weak"])
def test_chunked_gradients_are_accurate_on_long_sequences(request, decay):
    seed = seed_of(request)
    args = make_inputs(seed, (1, 1024, 2, 8), decay)
    grads_ref = gradients(wkv6_reference, to_f64(args), seed)
    grads = gradients(wkv6_chunked, args, seed)
    for i in range(6):
        assert rel_err(grads[i], grads_ref[i]) <= 5e-6, f"gradient {i}"  # measured <= 6.7e-7


# Jitted once per module, the cotangents as arguments (tests/wkv/helpers.py).
CHUNK_FORWARD, CHUNK_BACKWARD, CHUNK_VJP = chunk_programs(v6_chunked)


@pytest.mark.parametrize("decay", ["mixed", "extremes", "some_zero"])
def test_hand_written_chunk_backward_equals_autodiff_of_the_chunk_forward(request, decay):
    """The backward's closed forms (the decay gradient from r*dr and k*dk, the recomputed levels) against
    JAX differentiating the same chunk forward, one chunk of 32 tokens with a random start state."""
    seed = seed_of(request)
    r, k, v, w_log, u, state = make_inputs(seed, (2, 32, 3, 16), decay)
    chunk = tuple(x.transpose(0, 2, 1, 3) for x in (r, k, v, w_log))  # [B, H, L, N]
    inputs = (*chunk, u[:, None, :], state)
    rng = np.random.default_rng(seed + 1)
    dy, d_next = (jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in (chunk[0], state))
    expected = CHUNK_VJP(inputs, (dy, d_next))
    end = CHUNK_FORWARD(*inputs)[1]
    got = CHUNK_BACKWARD(*inputs, end, dy, d_next)
    for name, a, b in zip(("r", "k", "v", "w", "u", "state"), got, expected, strict=True):
        assert a.shape == b.shape, name
        assert rel_err(a, b) <= 4e-6, name  # measured <= 4.0e-7


def test_chunked_gradients_keep_the_input_dtypes(request):
    seed = seed_of(request)
    args = make_inputs(seed, (1, 70, 2, 16), "mixed", dtype=jnp.bfloat16)
    grads = gradients(wkv6_chunked, args, seed)
    grads_ref = gradients(wkv6_reference, to_f64(args), seed)
    for i, (grad, arg) in enumerate(zip(grads, args, strict=True)):
        assert grad.dtype == arg.dtype, f"gradient {i}"
        assert rel_err(grad, grads_ref[i]) <= 2e-2, f"gradient {i}"  # measured 2.3e-3 (bfloat16)


@pytest.mark.parametrize("form", ["recurrent", "chunked64"])
def test_two_pieces_with_carried_state_equal_one_call(request, form):
    r, k, v, w_log, u, state = make_inputs(seed_of(request), (2, 90, 2, 16), "mixed")
    y_all, s_all = FORMS[form](r, k, v, w_log, u, state)
    cut = 41
    y1, s1 = FORMS[form](r[:, :cut], k[:, :cut], v[:, :cut], w_log[:, :cut], u, state)
    y2, s2 = FORMS[form](r[:, cut:], k[:, cut:], v[:, cut:], w_log[:, cut:], u, s1)
    assert rel_err(jnp.concatenate([y1, y2], axis=1), y_all) <= 6e-7  # measured 7.7e-8
    assert rel_err(s2, s_all) <= 2e-7  # measured 2.5e-8


def test_dispatcher_runs_each_form_and_auto_is_chunked_on_cpu(request):
    args = make_inputs(seed_of(request), (1, 20, 2, 8), "mixed")
    y_ref, _ = wkv6_reference(*to_f64(args))
    for impl in ("recurrent", Impl.SCAN, Impl.CHUNKED, Impl.PALLAS, Impl.AUTO):
        y, _ = wkv6(*args, impl=impl, chunk_size=16)
        assert rel_err(y, y_ref) <= 8e-7, impl  # measured 8.4e-8
    y, s = wkv6(*args[:5])  # no state: starts from zeros
    assert rel_err(y, wkv6_reference(*to_f64(args[:5]))[0]) <= 8e-7  # measured 7.8e-8
    assert s.shape == (1, 2, 8, 8) and s.dtype == jnp.float32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "k": a["k"][:, :-1]}, "k must have r's shape"),
        (lambda a: {**a, "r": a["r"][0]}, "r must be"),
        (lambda a: {**a, "u": a["u"][:1]}, "u must be"),
        (lambda a: {**a, "state": a["state"][..., :-1]}, "state must be"),
        (lambda a: {**a, "w_log": -a["w_log"]}, "must be <= 0"),
        (lambda a: {**a, "v": a["v"].astype(jnp.int32)}, "v must be a float"),
    ],
)
def test_dispatcher_rejects_bad_inputs_with_a_clear_error(request, change, message):
    names = ("r", "k", "v", "w_log", "u", "state")
    args = dict(zip(names, make_inputs(seed_of(request), (1, 4, 2, 8), "mixed"), strict=True))
    with pytest.raises(ValueError, match=message):
        wkv6(**change(args))


@pytest.mark.parametrize("chunk_size", [0, 24, 2.0])
def test_chunked_rejects_unusable_chunk_sizes(chunk_size):
    args = make_inputs(0, (1, 4, 1, 8), "mixed")
    with pytest.raises(ValueError, match="chunk_size"):
        wkv6_chunked(*args, chunk_size=chunk_size)
