"""A new model family is one folder and one registry line: this module declares a toy family (config, model,
official layout, preset) and registers it, and the family then trains through ``rwkv_jax.training``, saves and
loads through ``save_official`` / ``load_official`` and keeps the model contract, with no edit outside this
module (``docs/adding_a_family.md`` walks through the same steps).

The toy: token shift, r/k/v projections and Eagle's WKV-5 with one static decay per head and channel, no
bonus, no feed-forward block.
"""

import dataclasses
import types
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwkv_jax.checkpoint.layout import block_count, check_keys, tensor_shape
from rwkv_jax.checkpoint.official import load_official, save_official
from rwkv_jax.checkpoint.transfer import dotted_name, linear_weights, model_from_tensors, official_tensors
from rwkv_jax.models.common import Embedding, LayerNorm, Linear, param, resolve_float_dtypes, token_shift
from rwkv_jax.models.family import Family, register, unregister
from rwkv_jax.models.language_model import LanguageModel
from rwkv_jax.training import loop
from rwkv_jax.training.evaluate import load_run
from rwkv_jax.training.metrics import read_metrics
from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.v6 import WKV6_FORMS, wkv6
from tests.models.contract import (
    assert_gradients_reach_every_parameter,
    assert_official_round_trip,
    assert_prefill_equals_steps_and_pieces,
    jitted,
    random_tokens,
    randomize,
)
from tests.training.conftest import tiny_config

# ------------------------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Sizes of the toy model; every field has a default, as the registry requires."""

    vocab_size: int = 256
    n_layer: int = 2
    n_embd: int = 32
    head_size: int = 8
    dtype: np.dtype | str = "float32"
    param_dtype: np.dtype | str = "float32"
    wkv_impl: Impl | str = Impl.AUTO
    chunk_size: int = 16

    def __post_init__(self):
        resolve_float_dtypes(self, "dtype", "param_dtype")
        object.__setattr__(self, "wkv_impl", Impl.parse(self.wkv_impl))


# ------------------------------------------------------------------------------------------------- model


class ToyLayerState(NamedTuple):
    att_x: jnp.ndarray  # [B, C] last ln output
    wkv: jnp.ndarray  # [B, H, N, N]


class ToyBlock(nnx.Module):
    def __init__(self, config: ToyConfig, rngs: nnx.Rngs):
        C, N, pd = config.n_embd, config.head_size, config.param_dtype
        self.config = config
        self.ln = LayerNorm(C, param_dtype=pd)
        self.mix = param(jnp.full((C,), 0.5, pd), ("embed",))
        self.decay = param(jnp.full((C // N, N), -1.0, pd), ("heads", "head_dim"))
        for name in ("receptance", "key", "value", "output"):
            kernel = 0.1 * nnx.initializers.normal()(rngs.params(), (C, C), pd)
            axes = ("heads", "embed") if name == "output" else ("embed", "heads")
            setattr(self, name, Linear(C, C, axes, kernel=kernel, dtype=config.dtype, param_dtype=pd))

    def __call__(self, x, state: ToyLayerState):
        h = self.ln(x)
        prev, att_x = token_shift(h, state.att_x)
        mixed = h + (prev - h) * self.mix[...].astype(h.dtype)
        B, T, C = x.shape
        heads = (B, T, C // self.config.head_size, self.config.head_size)
        r, k, v = (getattr(self, n)(mixed).reshape(heads) for n in ("receptance", "key", "value"))
        w_log = jnp.broadcast_to(-jnp.exp(self.decay[...].astype(jnp.float32)), heads)
        u = jnp.zeros(heads[2:], jnp.float32)
        y, wkv = wkv6(
            r, k, v, w_log, u, state.wkv, impl=self.config.wkv_impl, chunk_size=self.config.chunk_size
        )
        return x + self.output(y.reshape(B, T, C)), ToyLayerState(att_x.astype(jnp.float32), wkv)


class Toy(LanguageModel):
    def __init__(self, config: ToyConfig, *, rngs: nnx.Rngs):
        self.config = config
        C, V, pd = config.n_embd, config.vocab_size, config.param_dtype
        self.emb = Embedding(0.1 * nnx.initializers.normal()(rngs.params(), (V, C), pd))
        self.blocks = nnx.List(ToyBlock(config, rngs) for _ in range(config.n_layer))
        self.ln_out = LayerNorm(C, param_dtype=pd)
        head = 0.1 * nnx.initializers.normal()(rngs.params(), (C, V), pd)
        self.head = Linear(C, V, ("embed", "vocab"), kernel=head, dtype=config.dtype, param_dtype=pd)

    def empty_layer_state(self, batch_size: int) -> ToyLayerState:
        c = self.config
        heads = c.n_embd // c.head_size
        return ToyLayerState(
            jnp.zeros((batch_size, c.n_embd), jnp.float32),
            jnp.zeros((batch_size, heads, c.head_size, c.head_size), jnp.float32),
        )


# ------------------------------------------------------------------------------------- official layout


def _names(n_layer: int) -> list[str]:
    block = ["ln.weight", "ln.bias", "mix", "decay", *(f"{m}.weight" for m in ("receptance", "key", "value"))]
    names = ["emb.weight"]
    for i in range(n_layer):
        names += [f"blocks.{i}.{part}" for part in (*block, "output.weight")]
    return [*names, "ln_out.weight", "ln_out.bias", "head.weight"]


def _shapes(config: ToyConfig) -> dict[str, tuple[int, ...]]:
    C, V, N = config.n_embd, config.vocab_size, config.head_size
    by_part = {"emb.weight": (V, C), "head.weight": (V, C), "decay": (C // N, N)}

    def shape(name: str) -> tuple[int, ...]:
        part = name.split(".", 2)[-1] if name.startswith("blocks.") else name
        return by_part.get(part, (C, C) if part.endswith("weight") and "ln" not in part else (C,))

    return {name: shape(name) for name in _names(config.n_layer)}


_is_linear = linear_weights(frozenset({"receptance", "key", "value", "output", "head"}))


def _matches(keys: Iterable[str]) -> bool:
    return "blocks.0.mix" in set(keys)


def _from_state_dict(tensors: Mapping[str, np.ndarray], *, dtype="float32", wkv_impl=Impl.AUTO) -> Toy:
    n_layer = block_count(tensors)
    check_keys(tensors, _names(n_layer), "toy")
    vocab_size, n_embd = tensor_shape(tensors, "emb.weight", 2, "toy")
    head_size = tensor_shape(tensors, "blocks.0.decay", 2, "toy")[1]
    config = ToyConfig(vocab_size, n_layer, n_embd, head_size, dtype=dtype, wkv_impl=wkv_impl)
    return model_from_tensors(Toy, config, tensors, _shapes(config), dotted_name, _is_linear, "toy")


CONVERTER = types.SimpleNamespace(
    matches=_matches,
    layout_keys=lambda keys: _names(block_count(keys)),
    from_state_dict=_from_state_dict,
    to_state_dict=lambda model: official_tensors(
        model, dotted_name, _is_linear, _shapes(model.config), "float32"
    ),
)

TOY = Family(
    name="toy",
    title="Toy (test)",
    config_class=ToyConfig,
    model_class=Toy,
    converter=CONVERTER,
    presets={"toy-tiny": dict(n_layer=2, n_embd=32, vocab_size=256, head_size=8)},
    wkv=WKV6_FORMS,
)


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    """The one registry line, for this module's lifetime."""
    register(TOY)
    yield
    unregister(TOY.name)


# ------------------------------------------------------------------------------------------------ tests


def test_the_registered_family_keeps_the_model_contract(tmp_path):
    model = randomize(Toy(ToyConfig(vocab_size=64), rngs=nnx.Rngs(0)))
    tokens = random_tokens(64, 2, 9)
    assert_prefill_equals_steps_and_pieces(jitted(model), tokens, cut=4)
    assert_gradients_reach_every_parameter(model, tokens)
    assert_official_round_trip(model, tokens[:1], tmp_path / "toy.pth")


def test_the_registered_family_trains_and_its_trained_model_saves_and_loads_officially(corpus, tmp_path):
    config = tiny_config(corpus, family="toy")
    assert config.model.family == "toy" and "chunk_size" in config.model
    workdir = tmp_path / "run"
    loop.train_and_evaluate(config, workdir)
    losses = [r["loss"] for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0]
    fns, params, _, _ = load_run(workdir)
    trained = fns.module(params)
    tokens = random_tokens(256, 1, 6)
    save_official(trained, tmp_path / "trained.pth")
    loaded = load_official(tmp_path / "trained.pth")
    assert isinstance(loaded, Toy)
    np.testing.assert_array_equal(np.asarray(trained(tokens)[0]), np.asarray(loaded(tokens)[0]))
