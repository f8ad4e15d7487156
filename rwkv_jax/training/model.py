"""Builds the model of ``config.model`` and splits it into pure functions of the parameter pytree.

Training works on ``params``, a nested dict of float32 arrays (``nnx.split`` then ``to_pure_dict``), so that
optax, jit shardings and orbax all see a plain pytree; :class:`ModelFns` merges them back into the module for
each call.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx

from rwkv_jax.array_typing import Array
from rwkv_jax.sharding import logical_axes_of
from rwkv_jax.training.config import ConfigDict

FAMILIES = ("rwkv4", "rwkv6", "rwkv7")


def model_config(model: ConfigDict) -> Any:
    """The RWKV4Config / RWKV6Config / RWKV7Config described by the ``config.model`` section."""
    common = dict(
        vocab_size=model.vocab_size,
        n_layer=model.n_layer,
        n_embd=model.n_embd,
        ffn_dim=model.ffn_dim or None,
        dtype=jnp.dtype(model.dtype),
        param_dtype=jnp.float32,
        wkv_impl=model.wkv_impl,
    )
    if model.family == "rwkv4":
        from rwkv_jax.models.rwkv4 import RWKV4Config

        return RWKV4Config(**common)
    if model.family == "rwkv6":
        from rwkv_jax.models.rwkv6 import RWKV6Config

        lora = {
            name: getattr(model, name)
            for name in ("time_mix_extra_dim", "time_decay_extra_dim")
            if getattr(model, name)
        }
        return RWKV6Config(
            **common, version=model.version, head_size=model.head_size, chunk_size=model.chunk_size, **lora
        )
    if model.family == "rwkv7":
        from rwkv_jax.models.rwkv7 import RWKV7Config

        return RWKV7Config(**common, head_size=model.head_size, chunk_size=model.chunk_size)
    raise ValueError(f"unknown model family {model.family!r}; expected one of {FAMILIES}")


def build_model(model: ConfigDict, seed: int) -> nnx.Module:
    """A freshly initialised model (RWKV-LM's initialisation, from the model classes) for ``config.model``."""
    from rwkv_jax.models.rwkv4 import RWKV4
    from rwkv_jax.models.rwkv6 import RWKV6
    from rwkv_jax.models.rwkv7 import RWKV7

    config = model_config(model)
    model_class = {"rwkv4": RWKV4, "rwkv6": RWKV6, "rwkv7": RWKV7}[model.family]
    return model_class(config, rngs=nnx.Rngs(seed))


@dataclasses.dataclass(frozen=True)
class ModelFns:
    """A model as pure functions of its parameters.

    Attributes:
      graphdef: the module structure (``nnx.split``).
      rest: its non-parameter variables (normally empty), passed back unchanged.
      logical_axes: pytree (same structure as params) of each parameter's logical axis names.
    """

    graphdef: Any
    rest: Any
    logical_axes: Any

    @classmethod
    def split(cls, module: nnx.Module) -> tuple["ModelFns", dict]:
        """Splits ``module`` into its functions and its parameters (a nested dict of arrays)."""
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        return cls(graphdef, rest, logical_axes_of(params)), nnx.to_pure_dict(params)

    def module(self, params: dict) -> nnx.Module:
        """The module holding ``params`` (use inside a traced function, or for one-off calls)."""
        return nnx.merge(self.graphdef, params, self.rest)

    def apply(self, params: dict, tokens: Array, state: Any = None) -> tuple[Array, Any]:
        """``model(tokens [B, T], state) -> (logits [B, T, V] float32, new state)``."""
        return self.module(params)(tokens, state)

    def init_state(self, params: dict, batch_size: int) -> Any:
        """The model's zero recurrent state for ``batch_size`` sequences."""
        return self.module(params).init_state(batch_size)
