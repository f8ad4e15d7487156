"""The 16-bit-weight product kernel (rwkv_jax/native/lowp_matmul.cc) against a float64 product, forward
and gradients, over the shapes that reach each of its paths; and the bfloat16 decode step that uses it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rwkv_jax
from rwkv_jax import lowp_matmul
from rwkv_jax.native import build
from rwkv_jax.numerics import relative_error

DTYPES = [jnp.bfloat16, jnp.float16]


@pytest.fixture(scope="module", autouse=True)
def kernel_built():
    """Skips the module where the kernel cannot be built here (no C++ compiler, or RWKV_JAX_NATIVE=0)."""
    if not lowp_matmul.available(jnp.bfloat16):
        pytest.skip("the lowp_matmul kernel is not available here (see the rwkv_jax warning for why)")


def operands(rows: tuple[int, ...], k: int, n: int, dtype, x_scale: float = 1.0, w_scale: float = 1.0):
    rng = np.random.default_rng((*rows, k, n))
    x = jnp.asarray(x_scale * rng.standard_normal((*rows, k)), jnp.float32)
    w = jnp.asarray(w_scale * rng.standard_normal((k, n)), dtype)
    return x, w


def float64_product(x, w) -> np.ndarray:
    return np.asarray(x, np.float64) @ np.asarray(w.astype(jnp.float32), np.float64)


# Rows: one register tile's paths (1, 5, 6: each weight row block split over the workers), more rows
# (7, 16, 100: panels of x's rows times column chunks, 100 spanning two panels). Columns: whole register
# tiles, a remainder tile, fewer columns than a tile, and a long row (the head's shape, narrowed). One row of
# x with short rows of w (under 4 KiB) reads them one at a time: (1, 2688, 64) and (1, 37, 1000).
SHAPES = [((1,), 768, 4096), ((5,), 37, 101), ((6,), 300, 130), ((7,), 64, 10), ((16,), 257, 300)]
SHAPES += [((100,), 96, 520), ((2, 3), 33, 70), ((1,), 2688, 64), ((1,), 37, 1000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "k", "n"), SHAPES)
def test_kernel_matches_a_float64_product(rows, k, n, dtype):
    x, w = operands(rows, k, n, dtype)
    y = jax.jit(lowp_matmul.matmul)(x, w)
    assert y.shape == (*rows, n) and y.dtype == jnp.float32
    assert relative_error(y, float64_product(x, w)) < 3e-6  # measured 9.2e-8 .. 9.8e-7 (sums over K terms)


@pytest.mark.parametrize(
    ("dtype", "w_scale"), [(jnp.bfloat16, 1e30), (jnp.bfloat16, 1e-30), (jnp.float16, 6e4)]
)
def test_kernel_keeps_extreme_but_finite_weights(dtype, w_scale):
    """Weights near each format's largest and smallest normal values (bfloat16 shares float32's range)."""
    x, w = operands((3,), 64, 96, dtype, w_scale=w_scale / 4)
    y = lowp_matmul.matmul(x, w)
    assert relative_error(y, float64_product(x, w)) < 1.3e-6  # measured 1.1e-7 .. 1.3e-7


def test_kernel_runs_eagerly_and_in_jit_alike():
    x, w = operands((4,), 48, 200, jnp.bfloat16)
    assert relative_error(lowp_matmul.matmul(x, w), jax.jit(lowp_matmul.matmul)(x, w)) == 0.0


def test_kernel_under_vmap_maps_each_batch_member():
    x, w = operands((3, 2), 40, 72, jnp.bfloat16)
    mapped = jax.vmap(lowp_matmul.matmul, in_axes=(0, None))(x, w)
    assert relative_error(mapped, float64_product(x, w)) < 1e-6  # measured 1.0e-7


@pytest.mark.parametrize("rows", [(2,), (9,)])
def test_kernel_gradients_match_xla_float32(rows):
    x, w = operands(rows, 40, 72, jnp.bfloat16)
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal((*rows, 72)), jnp.float32)

    def loss(product):
        return lambda x, w: jnp.sum(product(x, w) * cotangent)

    dx, dw = jax.grad(loss(lowp_matmul.matmul), argnums=(0, 1))(x, w)
    dx_ref, dw_ref = jax.grad(loss(lambda x, w: x @ w.astype(jnp.float32)), argnums=(0, 1))(x, w)
    assert dw.dtype == jnp.bfloat16
    assert relative_error(dx, dx_ref) < 1e-6  # measured 0.0 (XLA computes both)
    assert relative_error(dw.astype(jnp.float32), dw_ref.astype(jnp.float32)) < 1e-6  # measured 0.0


def test_kernel_refuses_mismatched_shapes_and_dtypes():
    x, w = operands((2,), 8, 16, jnp.bfloat16)
    with pytest.raises(ValueError, match=r"x \[\.\.\., K\] and w \[K, N\]"):
        lowp_matmul.matmul(x[:, :7], w)
    with pytest.raises(ValueError, match="float32 x and bfloat16 / float16 w"):
        lowp_matmul.matmul(x, w.astype(jnp.float32))
    with pytest.raises(ValueError, match="float32 x and bfloat16 / float16 w"):
        lowp_matmul.matmul(x.astype(jnp.bfloat16), w)


SIZES = dict(vocab_size=300, n_layer=3, n_embd=64, head_size=32)
LORA_MATRICES = {
    "RWKV6": {"time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2"},
    "RWKV7": {"w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"},
}


@pytest.mark.parametrize("family", ["RWKV6", "RWKV7"])
def test_bfloat16_decode_reads_the_stored_matrices_and_matches_float32_weights(family):
    """The jitted step of a bfloat16 model holds no float32 copy of its linear kernels and LoRA matrices,
    decodes with the whole program, and its logits and state match the same weights widened to float32 in
    XLA's product."""
    config = getattr(rwkv_jax, f"{family}Config")(**SIZES, dtype="bfloat16")
    model = getattr(rwkv_jax, family)(config, rngs=nnx.Rngs(0))
    # The initial output projections are zero (the blocks would add nothing): perturb every parameter.
    params = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(params))))
    nnx.update(
        model, jax.tree.map(lambda a: a + 0.1 * jax.random.normal(next(keys), a.shape, a.dtype), params)
    )
    widened = getattr(rwkv_jax, family)(getattr(rwkv_jax, f"{family}Config")(**SIZES), rngs=nnx.Rngs(1))
    nnx.update(widened, jax.tree.map(lambda a: a.astype(jnp.float32), nnx.state(model, nnx.Param)))
    step = rwkv_jax.decoder(model)
    flat = jax.tree_util.tree_flatten_with_path(step.params.layers)[0]
    stored = {path[-1].key for path, leaf in flat if leaf.dtype == jnp.bfloat16}
    assert stored == {"kernel", *LORA_MATRICES[family], "weight"}  # weight: the embedding, read by row
    assert step.step.one_token is None  # one token: the whole program (decoding.reads_stored_16bit_kernels)
    for tokens in (np.array([[5]]), np.array([[5, 200, 7, 42, 1]]), np.array([[5], [9]])):
        logits, state = step.step(step.params, tokens, step.init_state(len(tokens)))
        reference, reference_state = widened(tokens)
        # Goose's LoRAs through the kernel (a different order of sums than XLA's) move its logits most.
        assert relative_error(logits, reference) < 4e-6  # measured 4.2e-7 .. 2.1e-6
        for ours, theirs in zip(jax.tree.leaves(state), jax.tree.leaves(reference_state), strict=True):
            assert relative_error(ours, theirs) < 3.5e-6  # measured 0.0 .. 1.5e-6


AVX2_FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-std=c++17", "-shared", "-fPIC")
AVX2_TARGET = "rwkv_jax_lowp_matmul_avx2"


def test_avx2_build_matches_a_float64_product(tmp_path, monkeypatch):
    """The kernel built for AVX2 + FMA + F16C alone (8-float vectors, 6 x 16 register tiles: what a CPU
    without AVX-512 compiles with -march=native), on this CPU, over the shapes of every path."""
    if not {"avx2", "fma", "f16c"} <= set(build.cpu_flags().split()):
        pytest.skip("needs an x86 CPU with AVX2, FMA and F16C")

    monkeypatch.setattr(build, "FLAGS", AVX2_FLAGS)
    monkeypatch.setenv("RWKV_JAX_CACHE_DIR", str(tmp_path))
    build.load.cache_clear()
    try:
        library = build.load("lowp_matmul")
    finally:
        build.load.cache_clear()
    assert library.LowpMatmulFastFormats() == 3
    jax.ffi.register_ffi_target(AVX2_TARGET, jax.ffi.pycapsule(library.LowpMatmul), platform="cpu")
    errors = []
    for dtype in DTYPES:
        for rows, k, n in SHAPES:
            x, w = operands(rows, k, n, dtype)
            flat = x.reshape(-1, k)
            out = jax.ShapeDtypeStruct((flat.shape[0], n), jnp.float32)
            y = jax.ffi.ffi_call(AVX2_TARGET, out)(flat, w).reshape(*rows, n)
            errors.append(relative_error(y, float64_product(x, w)))
    assert max(errors) < 3e-6, errors  # measured 9.7e-8 .. 9.8e-7
