"""State tuning: a trainable initial state per layer (RWKV-PEFT's ``time_state``), for every model family.

A model given :func:`add_state_tuning` holds ``model.tuned_state``, a :class:`InitialState` whose tensors are
:class:`TunedState` variables (one per layer and state field, without the batch axis, float32, zeros at the
start: zeros are the empty state of every WKV form, RWKV-4's ``(aa, bb, pp) = 0`` included, which means
"no history" as its ``pp = -1e38`` does). ``model.init_state(batch_size)`` then returns them broadcast to the
batch, so ``model(tokens)``, training and ``generate`` start from them. Training takes the gradient with
respect to ``nnx.state(model, TunedState)`` only (``TunedState`` is not an ``nnx.Param``: official weight
files, ``with_config`` and the optimiser of a full fine-tuning never see it by accident)::

    model = add_state_tuning(load_official("base.pth"))            # WKV state only (RWKV-PEFT's choice)
    tuned, frozen = nnx.state(model, TunedState, ...)
    save_official(model, "tuned.pth")   # weights + blocks.N.att.time_state, the rwkv package runs it
    save_state(model, "tuned.safetensors")                          # the state alone
    load_state(load_official("base.pth"), "tuned.safetensors")      # applied to the base model

Official layout: ``blocks.N.att.time_state`` is ``[H, N, N]`` indexed ``[head, value, key]`` for RWKV-5/6
(BlinkDL's ``rwkv`` package reads it with ``.transpose(1, 2)`` into its ``[head, key, value]`` state, which
is rwkv_jax's RWKV-6 layout) and for RWKV-7 (the ``[head, value, key]`` state of RWKV-LM's WKV-7 kernels,
rwkv_jax's RWKV-7 layout, stored as it is). RWKV-4 has no official state tensor: its state goes into a state
file only. A state file is a ``.safetensors`` file with the official ``time_state`` tensors where there is
one and ``blocks.N.state.<field>`` (rwkv_jax's layout, no batch axis) for the rest.
"""

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.checkpoint.safetensors_io import read_safetensors, read_safetensors_metadata, write_safetensors
from rwkv_jax.models.family import family_of

WKV = "wkv"
TOKEN_SHIFT = ("att_x", "ffn_x")
# Family -> axes that take rwkv_jax's WKV state [H, *, *] of one layer to the official time_state [H, value,
# key]. A family missing here has no official state tensor (RWKV-4).
OFFICIAL_STATE_AXES = {"rwkv6": (0, 2, 1), "rwkv7": (0, 1, 2)}
TIME_STATE = "blocks.{}.att.time_state"
OWN_STATE = "blocks.{}.state.{}"


class TunedState(nnx.Variable):
    """A trained initial-state tensor of one layer (no batch axis): ``nnx.state(model, TunedState)``."""


class InitialState(nnx.Module):
    """The tuned fields of every layer's initial state: ``layers[i][field]`` lists the :class:`TunedState`
    of field ``field`` (``"wkv"``, ``"att_x"``, ``"ffn_x"``) of layer ``i``, one per array of the field
    (RWKV-4's WKV state has three: ``aa``, ``bb``, ``pp``)."""

    def __init__(self, empty: Sequence[Any], fields: Sequence[str]):
        """``empty``: the model's empty state for one sequence (one layer state per block)."""
        self.fields = tuple(fields)
        self.layers = nnx.List(
            nnx.Dict(
                {
                    field: nnx.List(
                        TunedState(jnp.zeros(a.shape[1:], jnp.float32)) for a in jax.tree.leaves(value)
                    )
                    for field, value in layer._asdict().items()
                    if field in self.fields
                }
            )
            for layer in empty
        )

    def rebuilt_on(self, _base: Any) -> "InitialState":
        """The copy :func:`rwkv_jax.models.common.with_config` puts into the rebuilt model."""
        return nnx.clone(self)

    def initial(self, empty: Sequence[Any]) -> tuple[Any, ...]:
        """``empty`` (the empty state, batch B on axis 0) with the tuned fields broadcast to the batch."""

        def broadcast(tuned: Sequence[TunedState], zero: Any) -> Any:
            leaves = jax.tree.leaves(zero)
            values = [jnp.broadcast_to(t.get_value(), z.shape) for t, z in zip(tuned, leaves, strict=True)]
            return jax.tree.unflatten(jax.tree.structure(zero), values)

        return tuple(
            layer._replace(**{f: broadcast(tuned[f], getattr(layer, f)) for f in self.fields})
            for layer, tuned in zip(empty, self.layers, strict=True)
        )


def _state_fields(model: nnx.Module, token_shift: bool) -> tuple[str, ...]:
    fields = model.empty_layer_state(1)._fields
    wanted = (WKV, *TOKEN_SHIFT) if token_shift else (WKV,)
    missing = [f for f in wanted if f not in fields]
    if missing:
        raise ValueError(f"{type(model).__name__}'s layer state has no field(s) {missing}; it has {fields}")
    return wanted


def add_state_tuning(model: nnx.Module, *, token_shift: bool = False) -> nnx.Module:
    """Gives ``model`` a trainable initial state (zeros: the model computes as before); returns ``model``.

    ``token_shift``: also tune the token-shift states (``att_x``, ``ffn_x``); the official file has no place
    for them (:func:`save_state` keeps them). Raises ValueError when the model already has one.
    """
    model.tuned_state = _new_initial_state(model, _state_fields(model, token_shift))
    return model


def tuned_fields(model: nnx.Module) -> tuple[str, ...]:
    """The state fields ``model`` tunes; () for a model without a tuned state."""
    tuned = getattr(model, "tuned_state", None)
    return () if tuned is None else tuned.fields


def _layer_arrays(model: nnx.Module) -> list[dict[str, Any]]:
    """Per layer, ``{field: [numpy array, ...]}`` of the tuned state (no batch axis)."""
    if not tuned_fields(model):
        raise ValueError("the model has no tuned state (rwkv_jax.finetune.state.add_state_tuning)")
    return [
        {f: [np.asarray(v.get_value()) for v in layer[f]] for f in model.tuned_state.fields}
        for layer in model.tuned_state.layers
    ]


def official_state_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
    """``{blocks.N.att.time_state: [H, value, key] float32}`` of a model whose tuned state is the WKV state
    alone; {} without a tuned state. Raises ValueError for a tuned token shift or a family without an
    official state tensor (both fit only a state file: :func:`save_state`)."""
    fields = tuned_fields(model)
    if not fields:
        return {}
    family = family_of(model)
    if fields != (WKV,) or family.name not in OFFICIAL_STATE_AXES:
        raise ValueError(
            f"the official {family.title} file has no place for the tuned state fields {fields} (only the "
            "WKV state of RWKV-5/6/7, as blocks.N.att.time_state); save it with "
            "rwkv_jax.finetune.state.save_state"
        )
    axes = OFFICIAL_STATE_AXES[family.name]
    return {
        TIME_STATE.format(i): np.ascontiguousarray(layer[WKV][0].transpose(axes))
        for i, layer in enumerate(_layer_arrays(model))
    }


def split_official_state(tensors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(weights, time_state tensors)`` of an official state dict."""
    states = {k: v for k, v in tensors.items() if k.endswith(".att.time_state")}
    return {k: v for k, v in tensors.items() if k not in states}, states


def _set_layer(initial: InitialState, layer: int, field: str, value: Any) -> None:
    """Writes ``value`` (arrays in the field's tree order) into ``initial``, checking shapes."""
    target = initial.layers[layer][field]
    for variable, array in zip(target, jax.tree.leaves(value), strict=True):
        array = np.asarray(array, np.float32)
        if array.shape != variable.get_value().shape:
            raise ValueError(
                f"state of block {layer}, field {field}: shape {array.shape}, the model expects "
                f"{variable.get_value().shape}"
            )
        variable.set_value(jnp.asarray(array))


def apply_official_state(model: nnx.Module, states: dict[str, Any]) -> nnx.Module:
    """Gives ``model`` the tuned WKV state of ``states`` (``blocks.N.att.time_state``, one per block)."""
    family = family_of(model)
    if family.name not in OFFICIAL_STATE_AXES:
        raise ValueError(f"{family.title} files have no time_state; its state is a state file (save_state)")
    expected = [TIME_STATE.format(i) for i in range(model.config.n_layer)]
    if sorted(states) != sorted(expected):
        raise ValueError(
            f"time_state tensors {sorted(states)[:3]}: expected one per block, {expected[:3]}..."
        )
    initial = _new_initial_state(model, (WKV,))
    for i, name in enumerate(expected):
        _set_layer(initial, i, WKV, _from_official(family.name, states[name]))
    model.tuned_state = initial
    return model


def _new_initial_state(model: nnx.Module, fields: tuple[str, ...]) -> InitialState:
    """A zero :class:`InitialState` of ``fields`` for a model that has none yet (else ValueError)."""
    if tuned_fields(model):
        raise ValueError("the model already has a tuned state (model.tuned_state); start from the base model")
    return InitialState(model.init_state(1), fields)


def _from_official(family: str, time_state: Any) -> np.ndarray:
    """An official ``time_state [H, value, key]`` in rwkv_jax's layout of the family's WKV state."""
    return np.asarray(time_state).transpose(np.argsort(OFFICIAL_STATE_AXES[family]))


def save_state(model: nnx.Module, path: str | os.PathLike) -> None:
    """Writes the tuned state alone as ``.safetensors`` (official ``time_state`` names where the family has
    them, ``blocks.N.state.<field>[.<i>]`` otherwise); atomically."""
    try:
        tensors = official_state_tensors(model)
    except ValueError:
        tensors = {}
    for i, layer in enumerate(_layer_arrays(model)):
        for field, value in layer.items():
            if TIME_STATE.format(i) in tensors and field == WKV:
                continue
            for j, leaf in enumerate(value):
                tensors[OWN_STATE.format(i, field) + (f".{j}" if len(value) > 1 else "")] = leaf
    metadata = {
        "format": "rwkv_jax-state",
        "family": family_of(model).name,
        "fields": ",".join(tuned_fields(model)),
    }
    write_safetensors(path, tensors, metadata=metadata)


def load_state(model: nnx.Module, path: str | os.PathLike) -> nnx.Module:
    """Gives the base ``model`` the tuned state saved at ``path`` by :func:`save_state`; returns ``model``.

    Raises ValueError for a state of another family or other sizes (naming the tensor), before any change.
    """
    metadata = read_safetensors_metadata(path)
    family = family_of(model)
    if metadata.get("format") != "rwkv_jax-state":
        raise ValueError(f"{path} is not a state file written by rwkv_jax.finetune.state.save_state")
    if metadata.get("family") != family.name:
        raise ValueError(f"{path} holds a {metadata.get('family')} state, the model is {family.name}")
    tensors = read_safetensors(path)
    fields = tuple(metadata["fields"].split(","))
    initial = _new_initial_state(model, fields)
    empty = model.empty_layer_state(1)
    for i in range(model.config.n_layer):
        for field in fields:
            if field == WKV and TIME_STATE.format(i) in tensors:
                _set_layer(initial, i, field, _from_official(family.name, tensors[TIME_STATE.format(i)]))
                continue
            n = len(jax.tree.leaves(getattr(empty, field)))
            name = OWN_STATE.format(i, field)
            keys = [name] if n == 1 else [f"{name}.{j}" for j in range(n)]
            missing = [k for k in keys if k not in tensors]
            if missing:
                raise ValueError(f"{path} has no tensor {missing[0]}")
            _set_layer(initial, i, field, [tensors[k] for k in keys])
    model.tuned_state = initial
    return model
