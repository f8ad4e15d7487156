"""WKV-6 Pallas kernel (interpret mode) against the float64 reference; lowering for TPU and CUDA."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas.mosaic.interpret import interpret_pallas_call
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import wkv6 as kernel
from rwkv_jax.wkv.v6 import wkv6_reference
from tests.pallas import reference_check
from tests.pallas.lowering import assert_lowers_forward_and_backward
from tests.wkv.helpers import rel_err, seed_of

STRONGEST, WEAKEST = -float(np.exp(5.0)), -1e-6


def make_inputs(seed: int, shape: tuple[int, int, int, int], dtype=jnp.float32) -> tuple:
    """(r, k, v, w_log, u, state): decays log-uniform over [-exp(5), -1e-6], a quarter at each extreme, and
    one in twenty exactly 0 (w_log = -inf)."""
    rng = np.random.default_rng(seed)
    batch, _, heads, size = shape
    r, k, v = (jnp.asarray(rng.normal(size=shape), dtype) for _ in range(3))
    w_log = -np.exp(rng.uniform(np.log(-WEAKEST), 5.0, size=shape))
    extreme = rng.random(shape)
    w_log = np.where(extreme < 0.25, STRONGEST, np.where(extreme > 0.75, WEAKEST, w_log))
    w_log = np.where(extreme < 0.05, -np.inf, w_log)  # decays of exactly 0 too
    u = jnp.asarray(rng.normal(size=(heads, size)), dtype)
    state = jnp.asarray(rng.normal(size=(batch, heads, size, size)), jnp.float32)
    return r, k, v, jnp.asarray(w_log, jnp.float32), u, state


def assert_matches_reference(run, args, *, forward_tolerance: float, gradient_tolerance: float) -> None:
    """Forward (y, final state) and the gradients wrt r, k, v, w_log, u and the initial state."""
    names = ("r", "k", "v", "w_log", "u", "state")
    tolerances = (forward_tolerance, gradient_tolerance)
    reference_check.assert_matches_reference(run, wkv6_reference, args, names, tolerances)


def test_plain_reference_matches_the_float64_reference(request):
    args = make_inputs(seed_of(request), (2, 21, 2, 8))
    y, s = kernel.wkv6_float32_reference(*args)
    y_ref, s_ref = wkv6_reference(*(jnp.asarray(x, jnp.float64) for x in args))
    assert rel_err(y, y_ref) <= 7e-7 and rel_err(s, s_ref) <= 7e-7  # measured 7.5e-8


@pytest.mark.parametrize("target", kernel.TARGETS)
@pytest.mark.parametrize(
    ("batch", "length", "heads", "size", "chunk_size"),
    [(1, 16, 1, 64, 16), (2, 45, 2, 16, 32), (1, 70, 1, 16, 64)],
)
def test_float32_kernel_matches_reference(request, target, batch, length, heads, size, chunk_size):
    run = functools.partial(kernel.wkv6, chunk_size=chunk_size, target=target, interpret=True)
    args = make_inputs(seed_of(request), (batch, length, heads, size))
    # measured 1.0e-7, 1.6e-7 (relative errors of y / state and of the gradients)
    assert_matches_reference(run, args, forward_tolerance=1e-6, gradient_tolerance=1.5e-6)


@pytest.mark.parametrize("target", kernel.TARGETS)
def test_bfloat16_inputs_accumulate_in_float32(request, target):
    run = functools.partial(kernel.wkv6, chunk_size=16, target=target, interpret=True)
    args = make_inputs(seed_of(request), (1, 40, 2, 16), dtype=jnp.bfloat16)
    # measured 1.7e-3, 2.5e-3 (relative errors of y / state and of the gradients)
    assert_matches_reference(run, args, forward_tolerance=5e-3, gradient_tolerance=5e-3)


def test_tpu_semantics_without_races(request):
    interpret_pallas_call.races = None
    run = functools.partial(
        kernel.wkv6, chunk_size=16, target="tpu", interpret=pltpu.InterpretParams(detect_races=True)
    )
    args = make_inputs(seed_of(request), (1, 32, 1, 16))
    # measured 7.7e-8, 1.1e-7 (relative errors of y / state and of the gradients)
    assert_matches_reference(run, args, forward_tolerance=8e-7, gradient_tolerance=1e-6)
    assert interpret_pallas_call.races is not None, "race detection did not run"
    assert not interpret_pallas_call.races.races_found


def test_empty_state_is_the_default(request):
    r, k, v, w_log, u, _ = make_inputs(seed_of(request), (1, 20, 1, 16))
    y, s = kernel.wkv6(r, k, v, w_log, u, chunk_size=16, interpret=True)
    y_ref, s_ref = wkv6_reference(*(jnp.asarray(x, jnp.float64) for x in (r, k, v, w_log, u)))
    assert rel_err(y, y_ref) <= 7e-7 and rel_err(s, s_ref) <= 7e-7  # measured 7.8e-8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "r": a["r"][0]}, r"r must be \[B, T, H, N\]"),
        (lambda a: {**a, "v": a["v"][:, :-1]}, "v must have r's shape"),
        (lambda a: {**a, "u": a["u"][:1]}, r"u must be \[H, N\]"),
        (lambda a: {**a, "state": a["state"][0]}, r"state must be \[B, H, N, N\]"),
        (lambda a: {**a, "k": a["k"].astype(jnp.float16)}, "k must be float32 or bfloat16"),
        (lambda a: {**a, "w_log": a["w_log"].astype(jnp.bfloat16)}, "w_log must be float32"),
        (lambda a: {**a, "target": "cpu"}, "target must be one of"),
        (lambda a: {**a, "chunk_size": 24}, "block_t must be a power of 2"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    names = ("r", "k", "v", "w_log", "u", "state")
    args = dict(zip(names, make_inputs(0, (1, 4, 2, 16)), strict=True))
    with pytest.raises(ValueError, match=message):
        kernel.wkv6(**change(args), interpret=True)


def test_head_size_must_suit_the_target():
    args = make_inputs(0, (1, 4, 1, 24))
    with pytest.raises(ValueError, match="power of 2"):
        kernel.wkv6(*args, target="gpu", interpret=True)
    with pytest.raises(ValueError, match="multiple of 8"):
        kernel.wkv6(*make_inputs(0, (1, 4, 1, 12)), target="tpu", interpret=True)


def test_block_sizes_validate_themselves():
    with pytest.raises(ValueError, match="power of 2"):
        kernel.BlockSizes(block_t=8)
    with pytest.raises(ValueError, match="num_warps"):
        kernel.BlockSizes(num_warps=0)
    assert kernel.BlockSizes().block_t == kernel.DEFAULT_BLOCK_T


MODEL_SIZE = (8, 4096, 32, 64)  # B, T, H, N


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_lowers_forward_and_backward_at_model_size(platform):
    """Nothing runs: jax.export lowers the kernels (Mosaic for TPU, Triton for CUDA) from abstract shapes."""
    batch, _, heads, size = MODEL_SIZE
    sequence = jax.ShapeDtypeStruct(MODEL_SIZE, jnp.bfloat16)
    args = (
        sequence,
        sequence,
        sequence,
        jax.ShapeDtypeStruct(MODEL_SIZE, jnp.float32),
        jax.ShapeDtypeStruct((heads, size), jnp.bfloat16),
        jax.ShapeDtypeStruct((batch, heads, size, size), jnp.float32),
    )
    assert_lowers_forward_and_backward(kernel.wkv6, args, platform)
