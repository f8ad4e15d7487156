"""WKV-4 forms against the float64 reference: outputs, final states and gradients, on ordinary and extreme
inputs; the reference itself against the defining sum worked out by hand."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwkv_jax.numerics import relative_error
from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.v4 import WKV4State, wkv4, wkv4_recurrent, wkv4_reference, wkv4_scan

FORMS = {"recurrent": wkv4_recurrent, "scan": wkv4_scan}
# log(-w_log) for each decay regime: w_log = -exp(time_decay).
TIME_DECAY = {"normal": (0.0, 1.0), "near_zero": (5.0, 0.1), "near_one": (np.log(1e-6), 0.1)}
BATCH, CHANNELS = 2, 8


def make_inputs(
    seed: int, length: int, *, decay: str = "normal", k_scale: float = 1.0, with_state: bool = True
):
    """(w_log, u, k, v, state) in float32; state is a valid random one (den > 0) or None."""
    rng = np.random.default_rng(seed)
    mean, spread = TIME_DECAY[decay]
    w_log = -np.exp(rng.normal(mean, spread, CHANNELS))
    u = rng.normal(0.0, 1.0, CHANNELS)
    k = rng.uniform(-k_scale, k_scale, (BATCH, length, CHANNELS))
    v = rng.normal(0.0, 1.0, (BATCH, length, CHANNELS))
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    state = None
    if with_state:
        shape = (BATCH, CHANNELS)
        state = WKV4State(
            f32(rng.normal(0, 1, shape)), f32(rng.uniform(0.5, 2.0, shape)), f32(rng.normal(0, 2, shape))
        )
    return f32(w_log), f32(u), f32(k), f32(v), state


def rescaled(state: WKV4State, max_exp) -> tuple[np.ndarray, np.ndarray]:
    """(num, den) of ``state`` stored at exponent ``max_exp``: what it means, comparable across forms."""
    scale = np.exp(np.asarray(state.max_exp, np.float64) - np.asarray(max_exp, np.float64))
    return np.asarray(state.num, np.float64) * scale, np.asarray(state.den, np.float64) * scale


# Jitted once per module so that tests of the same shape share compilations (lax.associative_scan and its
# gradient are slow to compile).
FORWARD = {name: jax.jit(form) for name, form in FORMS.items()}


def assert_matches_reference(form: str, inputs, *, tolerance: float = 1e-6) -> None:
    y, state = FORWARD[form](*inputs)
    y_ref, state_ref = wkv4_reference(*inputs)
    assert y.dtype == inputs[3].dtype and state.num.dtype == jnp.float32
    assert relative_error(y, y_ref) <= tolerance
    num, den = rescaled(state, state_ref.max_exp)
    assert relative_error(num, state_ref.num) <= tolerance
    assert relative_error(den, state_ref.den) <= tolerance
    assert relative_error(state.max_exp, state_ref.max_exp) <= tolerance


def projection_loss(forward, args, weights, fixed_max_exp):
    """A random projection of y and of the final state's meaning (num, den at the fixed exponent).

    ``args`` = (w_log, u, k, v, num0, den0, max_exp0). Independent of the scale a form stores its final
    state at, so every form has the same gradient.
    """
    y, final = forward(*args[:4], WKV4State(*args[4:]))
    scale = jnp.exp(final.max_exp - fixed_max_exp)
    return sum(
        jnp.sum(w * x) for w, x in zip(weights, (y, final.num * scale, final.den * scale), strict=True)
    )


GRADIENT = {
    name: jax.jit(jax.grad(functools.partial(projection_loss, form)))
    for name, form in {**FORMS, "reference": wkv4_reference}.items()
}
GRADIENT_NAMES = ("w_log", "u", "k", "v", "state.num", "state.den", "state.max_exp")


def assert_gradients_match_reference(form: str, inputs, *, tolerance: float = 1e-5, underflowing=()) -> None:
    """Gradients wrt every input; those named in ``underflowing`` are below float32 range in truth and must
    come out zero."""
    w_log, u, k, v, state = inputs
    args = (w_log, u, k, v, *state)
    fixed = wkv4_reference(*inputs)[1].max_exp
    rng = np.random.default_rng(7)
    weights = [rng.normal(size=shape) for shape in (k.shape, state.num.shape, state.num.shape)]
    grads = GRADIENT[form](args, [jnp.asarray(x, jnp.float32) for x in weights], fixed.astype(jnp.float32))
    args64 = tuple(x.astype(jnp.float64) for x in args)
    grads_ref = GRADIENT["reference"](args64, [jnp.asarray(x, jnp.float64) for x in weights], fixed)
    for name, g, g_ref in zip(GRADIENT_NAMES, grads, grads_ref, strict=True):
        if name in underflowing:
            assert np.linalg.norm(g_ref) < 1e-30 and not np.asarray(g).any(), name
        else:
            assert relative_error(g, g_ref) <= tolerance, name


def test_reference_matches_hand_computed_sum():
    w, u = -0.5, 0.3
    k = np.array([0.2, -1.1])
    v = np.array([1.5, -0.7])
    y0 = (np.exp(u + k[0]) * v[0]) / np.exp(u + k[0])
    y1 = (np.exp(k[0]) * v[0] + np.exp(u + k[1]) * v[1]) / (np.exp(k[0]) + np.exp(u + k[1]))
    num = np.exp(w + k[0]) * v[0] + np.exp(k[1]) * v[1]
    den = np.exp(w + k[0]) + np.exp(k[1])
    max_exp = max(k[0] + w, k[1])
    as_array = functools.partial(jnp.asarray, dtype=jnp.float64)
    y, state = wkv4_reference(
        as_array([w]), as_array([u]), as_array(k)[None, :, None], as_array(v)[None, :, None]
    )
    # float64; where the measured error is 0, 1e-15 is a floor
    assert relative_error(np.asarray(y)[0, :, 0], [y0, y1]) <= 1e-15  # measured: 0
    assert relative_error(state.max_exp, [[max_exp]]) <= 1e-15  # measured: 0
    assert relative_error(state.num, [[num * np.exp(-max_exp)]]) <= 1e-15  # measured: 0
    assert relative_error(state.den, [[den * np.exp(-max_exp)]]) <= 1e-15  # measured: 1.5e-16


def test_reference_reads_initial_state_as_scaled_sums():
    """Starting from the state after a prefix equals running the prefix and the rest together."""
    w_log, u, k, v, _ = make_inputs(0, 9)
    y, state = wkv4_reference(w_log, u, k, v)
    y_tail, state_tail = wkv4_reference(
        w_log, u, k[:, 4:], v[:, 4:], wkv4_reference(w_log, u, k[:, :4], v[:, :4])[1]
    )
    # float64; where the measured error is 0, 1e-15 is a floor
    assert relative_error(y_tail, y[:, 4:]) <= 1e-15  # measured: 5.2e-17
    assert relative_error(np.stack(state_tail), np.stack(state)) <= 1e-15  # measured: 0


@pytest.mark.parametrize("length", [1, 2, 17, 256, 4096])
@pytest.mark.parametrize("form", FORMS)
def test_form_matches_reference(form, length):
    assert_matches_reference(form, make_inputs(length, length))  # measured <= 7.4e-8 (2026-12)


@pytest.mark.parametrize("form", FORMS)
def test_form_matches_reference_from_empty_state(form):
    assert_matches_reference(form, make_inputs(1, 17, with_state=False))  # measured 5.5e-8


@pytest.mark.parametrize("length", [1, 2, 17, 256, 4096])
@pytest.mark.parametrize("form", FORMS)
def test_gradients_match_reference(form, length):
    assert_gradients_match_reference(form, make_inputs(length + 1, length))  # measured <= 1.0e-6


@pytest.mark.parametrize("decay", ["near_zero", "near_one"])
@pytest.mark.parametrize("form", FORMS)
def test_extreme_decays_match_reference(form, decay):
    inputs = make_inputs(3, 4096, decay=decay, k_scale=5.0)
    assert_matches_reference(form, inputs, tolerance=1e-5)  # measured 1.2e-6 (4096 steps of near-one decay)
    # d/dw of anything scales with e^w ~ 1e-64 when w ~ -148: zero in float32.
    underflowing = ("w_log",) if decay == "near_zero" else ()
    assert_gradients_match_reference(form, inputs, tolerance=1e-4, underflowing=underflowing)  # 2.6e-5


@pytest.mark.parametrize("decay", ["normal", "near_one"])
@pytest.mark.parametrize("form", FORMS)
def test_large_keys_stay_finite_and_accurate(form, decay):
    inputs = make_inputs(4, 256, decay=decay, k_scale=60.0)
    assert_matches_reference(form, inputs)  # measured 1.2e-7
    assert_gradients_match_reference(form, inputs, tolerance=2e-5)  # measured 1.9e-6


@pytest.mark.parametrize("form", FORMS)
def test_gradients_of_raw_state_triple_match_reference(form):
    """A loss on (num, den, max_exp) as stored also sees the max_exp path through the running maximum."""
    w_log, u, k, v, state = make_inputs(5, 17)
    args = (w_log, u, k, v, *state)

    def loss(forward, *args):
        y, final = forward(*args[:4], WKV4State(*args[4:]))
        rng = np.random.default_rng(11)
        return sum(jnp.sum(jnp.asarray(rng.normal(size=t.shape), t.dtype) * t) for t in (y, *final))

    argnums = tuple(range(7))
    grads = jax.jit(jax.grad(functools.partial(loss, FORMS[form]), argnums))(*args)
    grads_ref = jax.jit(jax.grad(functools.partial(loss, wkv4_reference), argnums))(
        *(x.astype(jnp.float64) for x in args)
    )
    for name, g, g_ref in zip(GRADIENT_NAMES, grads, grads_ref, strict=True):
        assert relative_error(g, g_ref) <= 1e-6, name  # measured 1.4e-7


@pytest.mark.parametrize("form", FORMS)
def test_two_chunks_with_carried_state_equal_one_pass(form):
    w_log, u, k, v, state = make_inputs(6, 64)
    run = FORWARD[form]
    y, final = run(w_log, u, k, v, state)
    y_head, middle = run(w_log, u, k[:, :32], v[:, :32], state)
    y_tail, final_chunked = run(w_log, u, k[:, 32:], v[:, 32:], middle)
    assert relative_error(jnp.concatenate([y_head, y_tail], axis=1), y) <= 1e-7  # measured 1.1e-8
    num, den = rescaled(final_chunked, final.max_exp)
    assert relative_error(num, final.num) <= 5e-7 and relative_error(den, final.den) <= 5e-7  # 6.9e-8


@pytest.mark.parametrize("form", FORMS)
def test_bfloat16_inputs_give_bfloat16_output_near_reference(form):
    w_log, u, k, v, state = make_inputs(8, 256)
    k, v = k.astype(jnp.bfloat16), v.astype(jnp.bfloat16)
    y, final = FORWARD[form](w_log, u, k, v, state)
    y_ref, final_ref = wkv4_reference(w_log, u, k, v, state)
    assert y.dtype == jnp.bfloat16 and final.num.dtype == jnp.float32
    assert relative_error(y, y_ref) <= 5e-3  # measured 1.7e-3 (bfloat16 output)
    assert relative_error(rescaled(final, final_ref.max_exp)[0], final_ref.num) <= 2e-7  # measured 2.6e-8


@pytest.mark.parametrize("impl", ["recurrent", "scan", "pallas", Impl.AUTO])
def test_dispatcher_runs_the_chosen_form(impl):
    inputs = make_inputs(9, 17)
    y, _ = jax.jit(functools.partial(wkv4, impl=impl))(*inputs)
    y_ref, _ = wkv4_reference(*inputs)
    assert relative_error(y, y_ref) <= 5e-7  # measured 6.2e-8


def test_dispatcher_rejects_forms_wkv4_lacks():
    with pytest.raises(ValueError, match="chunked"):
        wkv4(*make_inputs(0, 2), impl=Impl.CHUNKED)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w, u, k, v, s: (w, u, k[0], v[0], s), r"k must be \[B, T, C\]"),
        (lambda w, u, k, v, s: (w, u, k, v[:, :1], s), "v must have k.s shape"),
        (lambda w, u, k, v, s: (w[:3], u, k, v, s), r"w_log must be \[C\]"),
        (lambda w, u, k, v, s: (w, u[None], k, v, s), r"u must be \[C\]"),
        (lambda w, u, k, v, s: (w, u, k[:, :0], v[:, :0], s), "at least one time step"),
        (lambda w, u, k, v, s: (w, u, k, v, s._replace(den=s.den[:1])), r"state.den must be \[B, C\]"),
        (lambda w, u, k, v, s: (w, u, k.astype(jnp.int32), v, s), "k must be a float array"),
    ],
)
def test_bad_shapes_raise_clear_errors(change, message):
    for forward in (wkv4, wkv4_recurrent, wkv4_scan, wkv4_reference):
        with pytest.raises(ValueError, match=message):
            forward(*change(*make_inputs(0, 3)))
