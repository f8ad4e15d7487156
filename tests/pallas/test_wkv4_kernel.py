"""The WKV-4 Pallas kernel in interpret mode against the float64 reference (forward and every gradient), its
TPU semantics with race detection, its input checks, and its lowering for TPU and GPU at model size."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import wkv4 as kernel
from rwkv_jax.numerics import relative_error  # NaN/Inf give NaN/Inf: every bound fails
from rwkv_jax.wkv.v4 import WKV4State, wkv4_reference
from tests.pallas.lowering import assert_lowers_forward_and_backward

# Small GPU-layout blocks keep interpret-mode compiles short; the TPU layout needs (16, 128) chunks.
GPU_SMALL = ("gpu", kernel.BlockSizes(block_c=16, block_t=4))
TPU = ("tpu", kernel.BlockSizes(block_c=128, block_t=16))
GRADIENT_NAMES = ("w_log", "u", "k", "v", "state.num", "state.den", "state.max_exp")


def make_inputs(seed: int, shape, *, dtype=jnp.float32, time_decay=(0.0, 1.0), k_scale: float = 1.0):
    """(w_log, u, k, v, num, den, max_exp): float32 except k and v in ``dtype``; a valid random state."""
    rng = np.random.default_rng(seed)
    batch, _, channels = shape
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    return (
        f32(-np.exp(rng.normal(*time_decay, channels))),
        f32(rng.normal(0, 1, channels)),
        jnp.asarray(rng.uniform(-k_scale, k_scale, shape), dtype),
        jnp.asarray(rng.normal(0, 1, shape), dtype),
        f32(rng.normal(0, 1, (batch, channels))),
        f32(rng.uniform(0.5, 2.0, (batch, channels))),
        f32(rng.normal(0, 2, (batch, channels))),
    )


def outputs_and_gradients(forward, args, cotangents):
    """``(y, state, grads)`` of ``forward(w_log, u, k, v, (num, den, max_exp))``, grads by ``jax.vjp``."""
    (y, state), pullback = jax.vjp(lambda *a: forward(*a[:4], tuple(a[4:])), *args)
    return y, state, pullback((cotangents[0], tuple(cotangents[1:])))


@functools.cache
def kernel_run(target: str, block_sizes: kernel.BlockSizes, interpret=True):
    """One jitted forward+backward per kernel configuration, shared by tests of the same shapes; it takes
    ``starts`` (None or a document-start mask) after the cotangents."""

    def run(args, cotangents, starts=None):
        forward = functools.partial(
            kernel.wkv4, target=target, block_sizes=block_sizes, interpret=interpret, starts=starts
        )
        return outputs_and_gradients(forward, args, cotangents)

    return jax.jit(run)


@jax.jit
def reference_run(args, cotangents, starts=None):
    def forward(w_log, u, k, v, state):
        y, final = wkv4_reference(w_log, u, k, v, WKV4State(*state), starts=starts)
        return y, tuple(final)

    return outputs_and_gradients(forward, [x.astype(jnp.float64) for x in args], cotangents)


def random_cotangents(seed: int, args):
    """Cotangents for y (in v's dtype) and for every component of the final state (max_exp included)."""
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=x.shape), x.dtype) for x in (args[3], *args[4:])]


def assert_kernel_matches_reference(
    config, args, *, forward_tolerance: float, gradient_tolerance: float, starts=None
):
    cotangents = random_cotangents(1, args)
    y, state, grads = kernel_run(*config)(args, cotangents, starts)
    y_ref, state_ref, grads_ref = reference_run(args, [c.astype(jnp.float64) for c in cotangents], starts)
    assert y.dtype == args[3].dtype and y.shape == y_ref.shape
    assert relative_error(y, y_ref) <= forward_tolerance
    for name, actual, expected in zip(("num", "den", "max_exp"), state, state_ref, strict=True):
        assert actual.dtype == jnp.float32
        assert relative_error(actual, expected) <= forward_tolerance, name
    for name, actual, expected, arg in zip(GRADIENT_NAMES, grads, grads_ref, args, strict=True):
        assert actual.dtype == arg.dtype, name
        assert relative_error(actual, expected) <= gradient_tolerance, name


@pytest.mark.parametrize(
    ("config", "shape"),
    [
        (GPU_SMALL, (1, 1, 16)),  # one step, one channel block
        (GPU_SMALL, (2, 13, 24)),  # T not a multiple of block_t, C padded to 32
        (TPU, (1, 33, 136)),  # two full (16, 128) chunks and a tail, C padded to 256
    ],
    ids=["gpu-1step", "gpu-padded", "tpu-padded"],
)
def test_float32_matches_reference(config, shape):
    assert_kernel_matches_reference(  # measured 2026-12: outputs <= 7.0e-8, gradients <= 2.6e-7
        config, make_inputs(0, shape), forward_tolerance=6e-7, gradient_tolerance=2e-6
    )


@pytest.mark.parametrize(
    "inputs",
    [
        dict(time_decay=(5.0, 0.1)),  # decay e^w ~ e^-148: nothing survives a step
        dict(time_decay=(np.log(1e-6), 0.1)),  # decay ~ 1 - 1e-6
        dict(k_scale=60.0),  # e^k far beyond float32 without the running maximum
    ],
    ids=["decay-near-0", "decay-near-1", "large-k"],
)
def test_extreme_inputs_stay_finite_and_accurate(inputs):
    args = make_inputs(2, (2, 13, 24), **inputs)
    if inputs.get("time_decay", (0,))[0] == 5.0:
        # d/dw scales with e^w ~ 1e-64 there: zero in float32, so compare everything else.
        cotangents = random_cotangents(1, args)
        grads = kernel_run(*GPU_SMALL)(args, cotangents)[2]
        grads_ref = reference_run(args, [c.astype(jnp.float64) for c in cotangents])[2]
        assert not np.asarray(grads[0]).any() and np.linalg.norm(grads_ref[0]) < 1e-30
        for name, actual, expected in list(zip(GRADIENT_NAMES, grads, grads_ref, strict=True))[1:]:
            assert relative_error(actual, expected) <= 1e-6, name  # measured 1.3e-7
    else:  # measured: outputs <= 9.5e-7 (near 1), gradients <= 5.6e-7
        assert_kernel_matches_reference(GPU_SMALL, args, forward_tolerance=8e-6, gradient_tolerance=5e-6)


def test_long_sequence_with_decay_near_one_matches_reference():
    """4096 steps of decay ~ 1 - 1e-6: the float32 rounding of every step adds up instead of fading."""
    args = make_inputs(6, (1, 4096, 16), time_decay=(np.log(1e-6), 0.1), k_scale=5.0)
    # Measured 2026-12: outputs 9.7e-7, gradients 7.2e-6.
    assert_kernel_matches_reference(GPU_SMALL, args, forward_tolerance=8e-6, gradient_tolerance=6e-5)


def test_bfloat16_inputs_match_reference():
    args = make_inputs(3, (2, 13, 24), dtype=jnp.bfloat16)
    # Measured 2026-12: outputs 1.6e-3, gradients 1.7e-3 (the bfloat16 rounding of the inputs and of y).
    assert_kernel_matches_reference(GPU_SMALL, args, forward_tolerance=5e-3, gradient_tolerance=5e-3)


def starts_mask(length: int, *rows: tuple[int, ...]) -> jax.Array:
    mask = np.zeros((len(rows), length), bool)
    for row, positions in enumerate(rows):
        mask[row, list(positions)] = True
    return jnp.asarray(mask)


def test_packed_documents_match_the_reference_with_starts():
    """The kernel with ``starts`` against the float64 recurrence with the same mask: y, the final state and
    every gradient (the initial state's included: every document reads it). Blocks of 4 steps: starts at
    t = 0, on block edges (4, 8), twice in one block (5, 6), in the tail block (12, the last token)."""
    starts = starts_mask(13, (0, 5, 6, 8), (4, 12))
    assert_kernel_matches_reference(  # measured: outputs <= 5.6e-8, gradients <= 1.3e-7
        GPU_SMALL,
        make_inputs(7, (2, 13, 16)),
        forward_tolerance=5e-7,
        gradient_tolerance=1.2e-6,
        starts=starts,
    )


def test_tpu_semantics_without_races():
    config = (*TPU, pltpu.InterpretParams(detect_races=True))
    assert_kernel_matches_reference(  # measured 2026-12: outputs <= 5.9e-8, gradients <= 9.0e-8
        config, make_inputs(4, (1, 3, 128)), forward_tolerance=5e-7, gradient_tolerance=8e-7
    )


def test_empty_state_is_the_default_and_plain_reference_agrees():
    """Also holds the kernel file's own float32 jnp reference to the float64 one."""
    w_log, u, k, v, *_ = make_inputs(5, (2, 13, 24))
    run = functools.partial(kernel.wkv4, target=GPU_SMALL[0], block_sizes=GPU_SMALL[1], interpret=True)
    y_ref, state_ref = wkv4_reference(w_log, u, k, v)
    for forward in (run, kernel.wkv4_float32_reference):
        y, state = forward(w_log, u, k, v)
        assert relative_error(y, y_ref) <= 5e-7  # measured 5.2e-8
        for actual, expected in zip(state, state_ref, strict=True):
            assert relative_error(actual, expected) <= 5e-7  # measured 6.2e-8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: (a[0], a[1], a[2][0], a[3][0], None), r"k must be \[B, T, C\]"),
        (lambda a: (a[0], a[1], a[2], a[3][:, :2], None), "v must have the shape of k"),
        (lambda a: (a[0][:3], a[1], a[2], a[3], None), r"w_log must be \[C\]"),
        (lambda a: (a[0], a[1], a[2], a[3], (a[4], a[5][:1], a[6])), r"state den must be \[B, C\]"),
        (lambda a: (a[0], a[1], a[2].astype(jnp.int32), a[3], None), "k must be a float array"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        kernel.wkv4(*change(make_inputs(0, (2, 3, 8))), interpret=True)


@pytest.mark.parametrize("starts", [jnp.zeros((2, 2), bool), jnp.zeros((2, 3), jnp.int32)])
def test_bad_starts_raise_a_clear_error(starts):
    w_log, u, k, v, *_ = make_inputs(0, (2, 3, 8))
    with pytest.raises(ValueError, match=r"starts must be a bool array \[B, T\] = \(2, 3\)"):
        kernel.wkv4(w_log, u, k, v, starts=starts, interpret=True)


def test_block_sizes_are_checked_for_the_target():
    with pytest.raises(ValueError, match="positive int"):
        kernel.BlockSizes(block_c=0, block_t=8)
    with pytest.raises(ValueError, match="multiple of 128"):
        kernel.BlockSizes(block_c=64, block_t=16).check_for("tpu")
    with pytest.raises(ValueError, match="powers of 2"):
        kernel.BlockSizes(block_c=24, block_t=8).check_for("gpu")
    kernel.BlockSizes.default("tpu", 2048).check_for("tpu")
    kernel.BlockSizes.default("gpu", 100).check_for("gpu")


MODEL_SIZE = (8, 4096, 2048)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_lowers_forward_and_backward_at_model_size(platform):
    """Nothing runs: jax.export lowers the kernels (Mosaic for TPU, Triton for CUDA) from abstract shapes."""
    batch, _, channels = MODEL_SIZE
    abstract = functools.partial(jax.ShapeDtypeStruct)
    channel, row = abstract((channels,), jnp.float32), abstract((batch, channels), jnp.float32)
    sequence = abstract(MODEL_SIZE, jnp.bfloat16)
    args = (channel, channel, sequence, sequence, (row, row, row))
    assert_lowers_forward_and_backward(kernel.wkv4, args, platform)
    starts = abstract(MODEL_SIZE[:2], jnp.bool_)
    assert_lowers_forward_and_backward(kernel.wkv4, args, platform, starts=starts)
