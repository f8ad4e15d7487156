"""bfloat16 / float16 models store their matrices (embedding, head, linear layers, LoRAs) in that dtype,
the rest float32; param_dtype stores everything in one dtype (training's float32 master parameters); on CPU
the jitted call computes in float32."""

import jax
import numpy as np
import pytest
from flax import nnx

import rwkv_jax
from rwkv_jax.decoding import is_product_matrix
from rwkv_jax.models.common import with_config
from rwkv_jax.numerics import relative_error
from rwkv_jax.training.config import model_section
from rwkv_jax.training.model import model_config

SIZES = dict(vocab_size=512, n_layer=2, n_embd=64, head_size=32)
TOKENS = np.array([[5, 300, 7, 42]], np.int32)


def dtypes_by_kind(model: nnx.Module) -> dict[str, set[str]]:
    """{"matrix": dtypes of the embedding, head, linear kernels and LoRAs, "other": the rest}."""
    kinds: dict[str, set[str]] = {"matrix": set(), "other": set()}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        is_matrix = is_product_matrix(path, variable) or path[0] == "emb"
        kinds["matrix" if is_matrix else "other"].add(str(variable.get_value().dtype))
    return kinds


def product_matrices(model: nnx.Module) -> list[jax.Array]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return [variable.get_value() for path, variable in flat if is_product_matrix(path, variable)]


def param_bytes(model: nnx.Module) -> int:
    return sum(leaf.nbytes for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("family", ["RWKV6", "RWKV7"])
def test_dtype_alone_stores_the_matrices_in_it_and_halves_the_memory(family, dtype):
    config_class = getattr(rwkv_jax, f"{family}Config")
    model_class = getattr(rwkv_jax, family)
    low = model_class(config_class(**SIZES, dtype=dtype), rngs=nnx.Rngs(0))
    full = model_class(config_class(**SIZES), rngs=nnx.Rngs(0))
    assert dtypes_by_kind(low) == {"matrix": {dtype}, "other": {"float32"}}
    assert dtypes_by_kind(full) == {"matrix": {"float32"}, "other": {"float32"}}
    matrix_elements = low.emb.weight[...].size + sum(leaf.size for leaf in product_matrices(low))
    assert param_bytes(low) == param_bytes(full) - 2 * matrix_elements  # 2 bytes saved per matrix entry


def test_param_dtype_stores_every_parameter_in_it_as_training_does():
    config = rwkv_jax.RWKV6Config(**SIZES, dtype="bfloat16", param_dtype="float32")
    master = rwkv_jax.RWKV6(config, rngs=nnx.Rngs(0))
    assert dtypes_by_kind(master) == {"matrix": {"float32"}, "other": {"float32"}}
    section = model_section("rwkv6", **SIZES, dtype="bfloat16")
    assert model_config(section).param_dtype == np.dtype("float32")


def test_load_official_with_bfloat16_holds_bfloat16_matrices_close_to_float32(tmp_path):
    full = rwkv_jax.RWKV6(rwkv_jax.RWKV6Config(**SIZES), rngs=nnx.Rngs(0))
    path = tmp_path / "finch.pth"
    rwkv_jax.save_official(full, path)
    low = rwkv_jax.load_official(path, dtype="bfloat16")
    assert dtypes_by_kind(low) == {"matrix": {"bfloat16"}, "other": {"float32"}}
    logits, _ = low(TOKENS)
    reference, _ = full(TOKENS)
    assert relative_error(logits, reference) < 2e-2  # measured 2.3e-3 (bfloat16 weights)


def test_bfloat16_model_computes_in_float32_on_cpu():
    model = rwkv_jax.RWKV6(rwkv_jax.RWKV6Config(**SIZES, dtype="bfloat16"), rngs=nnx.Rngs(0))
    logits, _ = model(TOKENS)
    float32_compute, _ = with_config(model, dtype="float32").forward(TOKENS)  # the same bfloat16 weights
    assert relative_error(logits, float32_compute) < 1e-6  # measured 0 and 9.6e-8
