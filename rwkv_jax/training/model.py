"""Builds the model of ``config.model`` and splits it into pure functions of the parameter pytree.

Training works on ``params``, a nested dict of float32 arrays (``nnx.split`` then ``to_pure_dict``), so that
optax, jit shardings and orbax all see a plain pytree; :class:`ModelFns` merges them back into the module for
each call. A model that scans its layers (``scan_layers``, the default) is split in the stacked layout
(:mod:`rwkv_jax.models.layer_stack`: each run of equal blocks one array per parameter, leading axis
``layers``), so that the train step's program and its compile time do not grow with depth; the per-layer
module comes back from :meth:`ModelFns.module`.
"""

import dataclasses
from typing import Any

from flax import nnx

from rwkv_jax.array_typing import Array
from rwkv_jax.models.family import get_family
from rwkv_jax.models.layer_stack import stack_layers, unstack_layers
from rwkv_jax.sharding import logical_axes_of
from rwkv_jax.training.config import ConfigDict


def model_config(model: ConfigDict) -> Any:
    """The family config (``RWKV7Config`` ...) of a ``config.model`` section, its fields passed on as is."""
    fields = dict(model.items())
    return get_family(fields.pop("family")).make_config(**fields)


def build_model(model: ConfigDict, seed: int) -> nnx.Module:
    """A freshly initialised model (the family's own initialisation) for the ``config.model`` section."""
    return get_family(model.family).model_class(model_config(model), rngs=nnx.Rngs(seed))


@dataclasses.dataclass(frozen=True)
class ModelFns:
    """A model as pure functions of its parameters.

    Attributes:
      graphdef: the module structure (``nnx.split``).
      rest: its variables that are neither trained nor frozen parameters (normally none), passed back as is.
      logical_axes: pytree (same structure as params) of each parameter's logical axis names.
      frozen_axes: the same for the frozen parameters (fine-tuning: :meth:`split_trainable`); {} if none.
    """

    graphdef: Any
    rest: Any
    logical_axes: Any
    frozen_axes: Any = dataclasses.field(default_factory=dict)

    @classmethod
    def split(cls, module: nnx.Module) -> tuple["ModelFns", dict]:
        """Splits ``module`` into its functions and its parameters (a nested dict of arrays)."""
        fns, params, _ = cls.split_trainable(module, nnx.Param)
        return fns, params

    @classmethod
    def split_trainable(cls, module: nnx.Module, trainable: Any) -> tuple["ModelFns", dict, dict]:
        """``(fns, params, frozen)``: the variables of the nnx filter ``trainable`` are ``params`` (what
        training differentiates, updates and checkpoints), the other parameters ``frozen`` (passed to every
        call, no gradient, no optimiser state); both nested dicts of arrays, in the stacked layout when
        ``module.scan_layers`` (see the module docstring)."""
        if getattr(module, "scan_layers", False):
            module = stack_layers(module)
        graphdef, params, frozen, rest = nnx.split(module, trainable, nnx.Param, ...)
        fns = cls(graphdef, rest, logical_axes_of(params), logical_axes_of(frozen))
        return fns, nnx.to_pure_dict(params), nnx.to_pure_dict(frozen)

    def module(self, params: dict, frozen: dict | None = None, *, per_layer: bool = True) -> nnx.Module:
        """The module holding ``params`` and ``frozen``: one block per layer (what checkpoints, adapters and
        the official converters address; stacked parameters are sliced, a copy), or with
        ``per_layer=False`` in the layout of ``params`` (no copy; what the steps call when traced)."""
        module = nnx.merge(self.graphdef, params, frozen or {}, self.rest)
        return unstack_layers(module) if per_layer else module

    def apply(
        self,
        params: dict,
        tokens: Array,
        state: Any = None,
        frozen: dict | None = None,
        starts: Array | None = None,
    ) -> tuple[Array, Any]:
        """``model(tokens [B, T], state) -> (logits [B, T, V] float32, new state)``; ``starts [B, T]`` bool
        (or None): packed documents' first tokens, where the model's state returns to ``state``."""
        model = self.module(params, frozen, per_layer=False)
        return model(tokens, state) if starts is None else model(tokens, state, starts=starts)

    def init_state(self, params: dict, batch_size: int, frozen: dict | None = None) -> Any:
        """The model's initial recurrent state for ``batch_size`` sequences (a tuned one when trained)."""
        return self.module(params, frozen, per_layer=False).init_state(batch_size)
