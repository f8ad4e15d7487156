"""The ``config.finetune`` section of a training run: start from an official checkpoint, train a part.

``method``: ``"none"`` trains every parameter (full fine-tuning when ``base`` is set, pretraining when not);
``"state"`` only the initial state of every layer (:mod:`rwkv_jax.finetune.state`); ``"lora"`` / ``"pissa"``
only low-rank adapters (:mod:`rwkv_jax.finetune.lora`). The trained variables are the run's ``params`` (the
gradient, the optimiser state and the checkpoints hold them alone); every other parameter is ``frozen``,
read again from ``base`` on resume, and kept in the compute dtype (bfloat16 halves it) when frozen.
:func:`check_finetune` runs with the config's validation, before any work: an unknown method, a method
without a base, a base of another family or other sizes than ``config.model``, LoRA targets the model
does not have are errors naming the field.
"""

import dataclasses
import os
from typing import Any

from flax import nnx

from rwkv_jax.checkpoint.official import detect, load_official, read_official
from rwkv_jax.finetune.lora import LoRAConfig, LoRAParam, adapter_targets, add_adapters
from rwkv_jax.finetune.state import TunedState, add_state_tuning, split_official_state
from rwkv_jax.models.common import with_config
from rwkv_jax.models.family import plain_value
from rwkv_jax.training.config import ConfigDict, ConfigError, model_section
from rwkv_jax.training.model import build_model, model_config

METHODS = ("none", "state", "lora", "pissa")
# Fields of config.model a fine-tuning may set differently from the base: numerics, not shapes.
NUMERICS = ("dtype", "param_dtype", "wkv_impl", "chunk_size", "group_norm_eps", "layer_norm_eps")


def _fail(field: str, value: Any, valid: str) -> None:
    raise ConfigError(f"config.finetune.{field} = {value!r}: expected {valid}")


def base_config(path: str | os.PathLike) -> Any:
    """The family config of the official checkpoint at ``path`` (from its tensor names and shapes alone)."""
    tensors, implied = read_official(path)
    tensors, _ = split_official_state(tensors)
    family = detect(list(tensors))
    return family, family.converter.config_from_state_dict(tensors, **implied)


def base_model_section(path: str | os.PathLike, **fields: Any) -> ConfigDict:
    """A ``config.model`` section of the base at ``path``: its family and sizes, then ``fields``."""
    family, config = base_config(path)
    values = {f.name: plain_value(getattr(config, f.name)) for f in dataclasses.fields(config)}
    return model_section(family.name, **{**values, **fields})


def lora_config(finetune: ConfigDict) -> LoRAConfig:
    """The adapters of a ``lora`` / ``pissa`` section (targets comma-separated)."""
    targets = tuple(t.strip() for t in finetune.lora_targets.split(",") if t.strip())
    rank, alpha = finetune.lora_rank, float(finetune.lora_alpha)
    return LoRAConfig(targets, rank=rank, alpha=alpha, init=finetune.method)


def check_finetune(config: ConfigDict) -> None:
    """Raises :class:`ConfigError` for a bad ``config.finetune`` (see the module docstring); reads only the
    base's header and tensor names/shapes (memory-mapped), builds nothing but an abstract model."""
    finetune = config.finetune
    if finetune.method not in METHODS:
        _fail("method", finetune.method, f"one of {METHODS}")
    if finetune.method != "none" and not finetune.base:
        _fail("base", finetune.base, f"an official checkpoint to fine-tune (method {finetune.method!r})")
    if finetune.base:
        if not os.path.exists(finetune.base):
            _fail("base", finetune.base, "an existing .pth / .safetensors file or Hugging Face folder")
        family, base = base_config(finetune.base)
        if family.name != config.model.family:
            expected = f"a {config.model.family} checkpoint (config.model.family); it is {family.name}"
            _fail("base", finetune.base, expected)
        ours = model_config(config.model)
        for field in dataclasses.fields(base):
            if field.name not in NUMERICS and getattr(base, field.name) != getattr(ours, field.name):
                _fail(
                    "base",
                    finetune.base,
                    f"config.model.{field.name} = {getattr(ours, field.name)!r} as in the base, which has "
                    f"{getattr(base, field.name)!r} (configs/finetune.py reads them from the base)",
                )
    if finetune.method in ("lora", "pissa"):
        try:
            wanted = lora_config(finetune).targets
        except (ValueError, TypeError) as e:
            raise ConfigError(f"config.finetune: {e}") from None
        valid = adapter_targets(nnx.eval_shape(lambda: build_model(config.model, 0)))
        unknown = [t for t in wanted if t not in valid]
        if unknown:
            _fail("lora_targets", finetune.lora_targets, f"layers of {config.model.family} among {valid}")


def finetune_model(config: ConfigDict) -> tuple[nnx.Module, Any]:
    """``(model, trainable)``: the model of the run (the base with the method's additions, or a fresh init)
    and the nnx filter of its trained variables. Call after :func:`check_finetune` (the config's
    validation)."""
    finetune, ours = config.get("finetune"), model_config(config.model)  # None: a run before fine-tuning
    if finetune is None or not finetune.base:
        return build_model(config.model, config.seed), nnx.Param
    # Frozen weights stay in the compute dtype; a full fine-tuning keeps the config's float32 master copy.
    param_dtype = ours.param_dtype if finetune.method == "none" else None
    model = load_official(
        finetune.base,
        dtype=plain_value(ours.dtype),
        wkv_impl=ours.wkv_impl,
        param_dtype=None if param_dtype is None else plain_value(param_dtype),
    )
    numerics = {name: getattr(ours, name) for name in NUMERICS[3:] if hasattr(ours, name)}
    model = with_config(model, **numerics)
    if finetune.method == "state":
        return add_state_tuning(model, token_shift=finetune.token_shift), TunedState
    if finetune.method in ("lora", "pissa"):
        return add_adapters(model, lora_config(finetune), seed=config.seed), LoRAParam
    return model, nnx.Param
