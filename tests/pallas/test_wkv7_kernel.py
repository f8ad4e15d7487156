"""WKV-7 Pallas kernel (interpret mode) against the float64 reference; lowering for TPU and CUDA."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.pallas.mosaic.interpret import interpret_pallas_call
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import wkv7 as kernel
from rwkv_jax.wkv.v7 import wkv7_reference
from tests.pallas import reference_check
from tests.pallas.lowering import assert_lowers_forward_and_backward
from tests.wkv.helpers import rel_err, seed_of, to_f64
from tests.wkv.test_v7 import make_inputs as model_inputs

NAMES = ("r", "k", "v", "w_log", "a", "b", "state")
# (forward, gradient) bounds by input dtype. Measured over seeds 0-2 of every kernel case below on both
# targets: float32 forward <= 1.9e-7, gradients <= 2.7e-7; bfloat16 inputs (their rounding) 1.7e-3 forward,
# 2.4e-3 gradients. Each bound is under 10x those.
BOUNDS = {jnp.float32: (1e-6, 2e-6), jnp.bfloat16: (5e-3, 5e-3)}


def make_inputs(seed: int, shape: tuple, decay: str, dtype=jnp.float32, iclr: str = "model") -> tuple:
    """(r, k, v, w_log, a, b, state) as the model builds them (``tests.wkv.test_v7``), or with decay
    'near_zero', beyond the model's range (the kernel takes any): per element a third each of ``-exp(5)``
    (decay e^-148), ``-inf`` (exactly 0) and ``-1e-6`` (nearly 1)."""
    beyond_model = decay == "near_zero"
    r, k, v, w_log, a, b, state = model_inputs(seed, shape, "model" if beyond_model else decay, dtype, iclr)
    if beyond_model:
        pick = np.random.default_rng(seed + 1).integers(0, 3, shape)
        w_log = jnp.asarray(np.choose(pick, [-np.exp(5.0), -np.inf, -1e-6]), jnp.float32)
    return r, k, v, w_log, a, b, state


def assert_matches_reference(run, args) -> None:
    """Forward (y, final state) and the gradients wrt r, k, v, w_log, a, b and the initial state, within the
    bounds of the inputs' dtype."""
    reference_check.assert_matches_reference(run, wkv7_reference, args, NAMES, BOUNDS[args[0].dtype.type])


def test_plain_reference_matches_the_float64_reference(request):
    args = make_inputs(seed_of(request), (2, 21, 2, 8), "model")
    y, s = kernel.wkv7_float32_reference(*args)
    y_ref, s_ref = wkv7_reference(*to_f64(args))
    assert rel_err(y, y_ref) <= 1e-6 and rel_err(s, s_ref) <= 1e-6  # measured 8.3e-8, 5.9e-8


@pytest.mark.parametrize("target", kernel.TARGETS)
@pytest.mark.parametrize(
    ("shape", "chunk_size", "decay", "iclr"),
    [
        ((1, 16, 1, 64), 16, "model", "model"),
        ((2, 45, 2, 16), 32, "near_one", "large"),
        ((1, 70, 1, 16), 64, "near_zero", "large"),
    ],
    ids=["N64", "T45-near1-iclr1", "T70-near0-iclr1"],
)
def test_float32_kernel_matches_reference(request, target, shape, chunk_size, decay, iclr):
    run = functools.partial(kernel.wkv7, chunk_size=chunk_size, target=target, interpret=True)
    args = make_inputs(seed_of(request), shape, decay, iclr=iclr)
    assert_matches_reference(run, args)


@pytest.mark.parametrize("target", kernel.TARGETS)
def test_bfloat16_inputs_accumulate_in_float32(request, target):
    run = functools.partial(kernel.wkv7, chunk_size=16, target=target, interpret=True)
    args = make_inputs(seed_of(request), (1, 40, 2, 16), "model", dtype=jnp.bfloat16)
    assert_matches_reference(run, args)


# Packed documents in a row of 40 tokens, blocks of 32 (sub-chunks of 16): row 0 starts at t = 0, on a
# sub-chunk edge inside a block (16), twice in one sub-chunk (20, 22) and in the second block (33); row 1
# twice in a row (5, 6) and on both sides of the block edge (31, 32).
DOCUMENT_STARTS = ((0, 16, 20, 22, 33), (5, 6, 31, 32))
# Measured (seeds from the case names): float32 (TPU layout) y 8.9e-8, state 6.1e-8, gradients <= 1.5e-7;
# bfloat16 inputs (GPU layout; their rounding) y 1.8e-3, state 5.9e-8, gradients <= 2.7e-3. Bounds under
# 10x those.
STARTS_BOUNDS = {jnp.float32: (8e-7, 1.5e-6), jnp.bfloat16: (1e-2, 1e-2)}


def starts_mask(length: int) -> jax.Array:
    mask = np.zeros((len(DOCUMENT_STARTS), length), bool)
    for row, positions in enumerate(DOCUMENT_STARTS):
        mask[row, list(positions)] = True
    return jnp.asarray(mask)


@pytest.mark.parametrize(("target", "dtype"), [("tpu", jnp.float32), ("gpu", jnp.bfloat16)])
def test_packed_documents_match_the_reference_with_starts(request, target, dtype):
    """y, the final state and every gradient (the initial state's included: every document reads it) of the
    kernel with ``starts`` against the float64 recurrence with the same ``starts``."""
    starts = starts_mask(40)
    run = functools.partial(kernel.wkv7, starts=starts, chunk_size=32, target=target, interpret=True)
    args = make_inputs(seed_of(request), (2, 40, 1, 16), "model", dtype=dtype)
    reference = functools.partial(wkv7_reference, starts=starts)
    reference_check.assert_matches_reference(jax.jit(run), reference, args, NAMES, STARTS_BOUNDS[dtype])


def test_tpu_semantics_without_races(request):
    interpret_pallas_call.races = None
    run = functools.partial(
        kernel.wkv7, chunk_size=16, target="tpu", interpret=pltpu.InterpretParams(detect_races=True)
    )
    args = make_inputs(seed_of(request), (1, 32, 1, 16), "mixed")
    assert_matches_reference(run, args)
    assert interpret_pallas_call.races is not None, "race detection did not run"
    assert not interpret_pallas_call.races.races_found


def test_empty_state_is_the_default(request):
    *inputs, _ = make_inputs(seed_of(request), (1, 20, 1, 16), "model")
    y, s = kernel.wkv7(*inputs, chunk_size=16, interpret=True)
    y_ref, s_ref = wkv7_reference(*to_f64(inputs))
    assert rel_err(y, y_ref) <= 1e-6 and rel_err(s, s_ref) <= 1e-6  # measured 1.1e-7, 6.3e-8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "r": a["r"][0]}, r"r must be \[B, T, H, N\]"),
        (lambda a: {**a, "a": a["a"][:, :-1]}, "a must have r's shape"),
        (lambda a: {**a, "state": a["state"][0]}, r"state must be \[B, H, N, N\]"),
        (lambda a: {**a, "b": a["b"].astype(jnp.float16)}, "b must be float32 or bfloat16"),
        (lambda a: {**a, "w_log": a["w_log"].astype(jnp.bfloat16)}, "w_log must be float32"),
        (lambda a: {**a, "state": a["state"].astype(jnp.bfloat16)}, "state must be float32"),
        (lambda a: {**a, "target": "cpu"}, "target must be one of"),
        (lambda a: {**a, "chunk_size": 24}, "block_t must be a power of 2"),
        (lambda a: {**a, "starts": jnp.zeros((1, 3), bool)}, r"starts must be a bool array \[B, T\]"),
        (lambda a: {**a, "starts": jnp.zeros((1, 4), jnp.int32)}, r"starts must be a bool array \[B, T\]"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    args = dict(zip(NAMES, make_inputs(0, (1, 4, 2, 16), "model"), strict=True))
    with pytest.raises(ValueError, match=message):
        kernel.wkv7(**change(args), interpret=True)


def test_head_size_must_suit_the_target():
    with pytest.raises(ValueError, match="power of 2"):
        kernel.wkv7(*make_inputs(0, (1, 4, 1, 24), "model"), target="gpu", interpret=True)
    with pytest.raises(ValueError, match="multiple of 8"):
        kernel.wkv7(*make_inputs(0, (1, 4, 1, 12), "model"), target="tpu", interpret=True)


MODEL_SIZE = (8, 4096, 32, 64)  # B, T, H, N


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_lowers_forward_and_backward_at_model_size(platform):
    """Nothing runs: jax.export lowers the kernels (Mosaic for TPU, Triton for CUDA) from abstract shapes."""
    batch, _, heads, size = MODEL_SIZE
    sequence = jax.ShapeDtypeStruct(MODEL_SIZE, jnp.bfloat16)
    log_decay = jax.ShapeDtypeStruct(MODEL_SIZE, jnp.float32)
    state = jax.ShapeDtypeStruct((batch, heads, size, size), jnp.float32)
    args = (sequence, sequence, sequence, log_decay, sequence, sequence, state)
    assert_lowers_forward_and_backward(kernel.wkv7, args, platform)
    starts = jax.ShapeDtypeStruct((batch, MODEL_SIZE[1]), jnp.bool_)
    assert_lowers_forward_and_backward(kernel.wkv7, args, platform, starts=starts)
