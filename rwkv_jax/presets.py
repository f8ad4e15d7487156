"""Model sizes by name, across every registered family (big_vision's ``decode_variant`` habit).

Each family declares its sizes once, in ``rwkv_jax/models/<family>/presets.py`` (the published models, plus
small byte-level sizes for tests, ``runlocal`` and the CPU demo); this module looks them up::

    config = get_preset("finch-1b6").config(dtype="bfloat16")   # an RWKV6Config
    model = get_preset("goose-tiny").build(seed=0)
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from flax import nnx

from rwkv_jax.models.family import Family, families, get_family


@dataclasses.dataclass(frozen=True)
class Preset:
    """One named size: the family it belongs to and the config fields it sets (the rest keep defaults)."""

    name: str
    family: str
    fields: Mapping[str, Any]

    def config(self, **overrides: Any) -> Any:
        """The family's config with this size; ``overrides`` change any other field (or a size)."""
        return get_family(self.family).make_config(**{**self.fields, **overrides})

    def build(self, seed: int = 0, **overrides: Any) -> nnx.Module:
        """A freshly initialised model of this size."""
        family = get_family(self.family)
        return family.model_class(self.config(**overrides), rngs=nnx.Rngs(seed))


def presets() -> dict[str, Preset]:
    """Every preset of every registered family, by name."""
    table: dict[str, Preset] = {}
    for family in families():
        for name, fields in family.presets.items():
            _add(table, name, family, fields)
    return table


def _add(table: dict[str, Preset], name: str, family: Family, fields: Mapping[str, Any]) -> None:
    if name in table:
        raise ValueError(f"preset {name!r} is declared by both {table[name].family} and {family.name}")
    table[name] = Preset(name, family.name, dict(fields))


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is an error listing the valid ones."""
    table = presets()
    if name not in table:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(table)}")
    return table[name]
