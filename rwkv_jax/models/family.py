"""The record that declares one model family, and the registry every other part of rwkv_jax iterates over.

A family (RWKV-4; Eagle/Finch; Goose; a researcher's variant) is one folder under ``rwkv_jax/models/`` whose
``__init__.py`` builds a :class:`Family` and one line in :mod:`rwkv_jax.models.registry` that registers it.
Training (``Model(**config.model)``), :func:`rwkv_jax.load_official` / :func:`rwkv_jax.save_official`, the
presets, the numerics sweep and the notebooks look families up here; nothing else names them.
"""

import dataclasses
import difflib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from rwkv_jax.wkv.impl import Impl


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything rwkv_jax needs to know about one model family.

    Attributes:
      name: the registry key, also ``config.model.family`` in training configs (``"rwkv7"``).
      title: a human name for messages and tables (``"RWKV-7 Goose"``).
      config_class: a frozen dataclass of sizes, numerics and architectural switches, every field with a
        default (the published architecture); ``config_class(**fields)`` validates itself.
      model_class: the Flax NNX module, ``model_class(config, rngs=nnx.Rngs(seed))``; its call is
        ``model(tokens [B, T], state) -> (logits [B, T, V], state)`` with ``init_state(batch_size)``.
      converter: the official checkpoint module: ``matches(keys)``, ``layout_keys(keys)``,
        ``from_state_dict(tensors, *, dtype, wkv_impl, **options)``, ``to_state_dict(model)`` (see
        :mod:`rwkv_jax.checkpoint.official`); None for a family without an official format.
      presets: published and test sizes, ``{preset name: config fields}``.
      wkv: the family's WKV forms table (:class:`rwkv_jax.wkv.forms.WKVForms`), None if it has no WKV.
      numerics: the family's cases for the numerics sweep (:mod:`rwkv_jax.numerics`: random WKV inputs per
        decay regime and how to compare states), None to leave the family out of the sweep.
    """

    name: str
    title: str
    config_class: type
    model_class: type
    converter: ModuleType | None = None
    presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    wkv: Any = None
    numerics: Any = None

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.config_class):
            raise TypeError(f"family {self.name!r}: config_class must be a dataclass")
        missing = [f.name for f in dataclasses.fields(self.config_class) if not _has_default(f)]
        if missing:
            raise TypeError(
                f"family {self.name!r}: every field of {self.config_class.__name__} needs a default "
                f"(the published architecture); {missing} have none"
            )
        for preset, fields in self.presets.items():
            self.check_fields(fields, what=f"preset {preset!r}")

    @property
    def field_names(self) -> tuple[str, ...]:
        """The config fields, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(self.config_class))

    def default_fields(self) -> dict[str, Any]:
        """Every config field with its declared default, as plain Python values (enums as names, dtypes as
        strings); derived sizes stay None (resolved by the config class from the other fields)."""
        return {f.name: plain_value(_default(f)) for f in dataclasses.fields(self.config_class)}

    def check_fields(self, fields: Mapping[str, Any], what: str = "model config") -> None:
        """Raises ValueError naming the first key of ``fields`` that is not a config field, with the nearest
        valid fields of this family."""
        for key in fields:
            if key not in self.field_names:
                close = difflib.get_close_matches(key, self.field_names, n=3, cutoff=0.5)
                hint = f"nearest: {', '.join(close)}" if close else f"valid: {', '.join(self.field_names)}"
                raise ValueError(f"{what}: {key!r} is not a field of {self.name} ({self.title}); {hint}")

    def make_config(self, **fields: Any) -> Any:
        """``config_class(**fields)`` after checking the field names."""
        self.check_fields(fields)
        return self.config_class(**fields)


def _default(field: dataclasses.Field) -> Any:
    return field.default if field.default_factory is dataclasses.MISSING else field.default_factory()


def _has_default(field: dataclasses.Field) -> bool:
    return field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING


def plain_value(value: Any) -> Any:
    """``value`` as a config file would write it: an :class:`Impl` by its name, a numpy dtype as a string."""
    if isinstance(value, Impl):
        return value.value
    if isinstance(value, np.dtype):
        return value.name
    return value


_REGISTRY: dict[str, Family] = {}


def register(family: Family, *, replace: bool = False) -> Family:
    """Adds ``family`` to the registry (``replace=True`` allows redefining a name, e.g. in a notebook)."""
    if not isinstance(family, Family):
        raise TypeError(f"register expects a Family, got {type(family).__name__}")
    if family.name in _REGISTRY and not replace:
        raise ValueError(f"a family named {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    return family


def unregister(name: str) -> None:
    """Removes the family ``name`` (tests register temporary families)."""
    _REGISTRY.pop(name, None)


def families() -> tuple[Family, ...]:
    """Every registered family, in registration order."""
    _load_builtin()
    return tuple(_REGISTRY.values())


def get_family(name: str) -> Family:
    """The family registered as ``name``; an unknown name is an error listing the registered ones."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model family {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def family_of(obj: Any) -> Family:
    """The family whose model class or config class ``obj`` is an instance of."""
    for family in families():
        if isinstance(obj, family.model_class | family.config_class):
            return family
    known = ", ".join(f.model_class.__name__ for f in families())
    raise TypeError(f"{type(obj).__name__} belongs to no registered family; known models: {known}")


def _load_builtin() -> None:
    """Imports :mod:`rwkv_jax.models.registry`, whose import registers the built-in families (lazily, so
    the family packages may import this module)."""
    import rwkv_jax.models.registry  # noqa: F401
