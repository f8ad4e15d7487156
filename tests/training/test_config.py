"""Config files load (every preset of their family), the model section is the family's own config fields, and
misspelt keys fail naming the nearest valid ones."""

import dataclasses
import pathlib

import pytest

from rwkv_jax.models.family import families, get_family
from rwkv_jax.presets import get_preset, presets
from rwkv_jax.training.config import (
    apply_override,
    apply_overrides,
    default_config,
    load_config,
    model_section,
    parse_arg,
    validate,
)
from rwkv_jax.training.model import model_config

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
# The pretraining and demo configs; configs/finetune.py needs a base checkpoint (tests/finetune).
CONFIG_FILES = sorted(p.name for p in CONFIGS.glob("*.py") if p.name != "finetune.py")


@pytest.mark.parametrize("name", CONFIG_FILES)
@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_config_loads_with_its_default_and_runlocal(name, arg):
    config = load_config(f"{CONFIGS / name}:{arg}")
    family = get_family(config.model.family)
    assert set(config.model.keys()) == {"family", *family.field_names}
    assert isinstance(model_config(config.model), family.config_class)
    assert config.train.steps > 0 and config.data.seq_len > 0


@pytest.mark.parametrize(
    "name,preset",
    [
        (name, preset.name)
        for name in CONFIG_FILES
        for preset in presets().values()
        if preset.family == load_config(str(CONFIGS / name)).model.family
    ],
)
def test_config_loads_every_preset_of_its_family(name, preset):
    config = load_config(f"{CONFIGS / name}:size={preset}")
    for field, value in get_preset(preset).fields.items():
        assert config.model[field] == value


def test_every_family_has_a_config_file_or_is_a_test_family():
    covered = {load_config(str(CONFIGS / name)).model.family for name in CONFIG_FILES}
    assert {family.name for family in families()} - covered == set()


def test_paper_presets_have_published_sizes():
    assert dataclasses.astuple(get_preset("rwkv4-14b").config())[:3] == (50277, 40, 5120)
    eagle = get_preset("eagle-7b").config()
    assert (eagle.version, eagle.n_layer, eagle.n_embd, eagle.head_size) == ("5.2", 32, 4096, 64)
    finch = get_preset("finch-3b1").config()
    assert (finch.n_layer, finch.n_embd, finch.vocab_size) == (32, 2560, 65536)
    assert get_preset("finch-1b6").config().ffn_dim == 7168
    assert get_preset("rwkv4-169m").config().ffn_dim == 3072


def test_model_section_holds_the_family_fields_with_their_defaults_and_the_preset():
    section = model_section(preset="finch-tiny", dtype="bfloat16")
    assert section.family == "rwkv6" and section.n_layer == 2 and section.head_size == 16
    assert section.dtype == "bfloat16" and section.time_mix_extra_dim == 32 and section.ffn_dim is None
    assert model_config(section).ffn_dim == 224  # derived by RWKV6Config from n_embd, as RWKV-LM


def test_a_foreign_or_misspelt_model_field_names_the_nearest_fields_of_the_family():
    with pytest.raises(ValueError, match=r"'time_mix_extra_dim' is not a field of rwkv7.*valid|nearest"):
        model_section("rwkv7", time_mix_extra_dim=4)
    with pytest.raises(ValueError, match=r"'head_sise' is not a field of rwkv6.*nearest: head_size"):
        apply_override(default_config(), "model.head_sise", "16")
    config = default_config()
    with config.model.unlocked():
        config.model.chunk_sise = 3
    with pytest.raises(ValueError, match=r"'chunk_sise'.*nearest: chunk_size"):
        validate(config)


def test_overriding_the_family_switches_the_model_section_and_keeps_shared_fields():
    config = default_config()
    apply_overrides(config, ["--config.model.n_layer=3", "--config.model.family=rwkv4"])
    assert config.model.family == "rwkv4" and config.model.n_layer == 3 and "head_size" not in config.model
    validate(config)
    assert model_config(config.model).n_layer == 3


def test_misspelt_override_names_the_nearest_keys():
    config = default_config()
    with pytest.raises(ValueError, match=r"unknown config key 'optim\.warmup_step'.*optim\.warmup_steps"):
        apply_override(config, "optim.warmup_step", "10")
    with pytest.raises(ValueError, match=r"'optm\.lr'.*optim\.lr"):
        apply_overrides(config, ["--config.optm.lr=1e-3"])


def test_override_converts_to_the_field_type_and_rejects_bad_values():
    config = default_config()
    rest = apply_overrides(config, ["--config.optim.lr=1", "--config.segments.truncate=true", "--other"])
    assert rest == ["--other"]
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float) and config.segments.truncate is True
    with pytest.raises(ValueError, match=r"train\.steps expects a int"):
        apply_override(config, "train.steps", "many")


def test_misspelt_key_in_a_config_file_fails(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(
        "from rwkv_jax.training.config import default_config\n"
        "def get_config(arg=None):\n    c = default_config()\n    c.optim.learning_rate = 1.0\n    return c\n"
    )
    with pytest.raises(AttributeError, match="learning_rate"):
        load_config(str(path))


def test_unknown_key_added_to_an_unlocked_config_is_rejected(tmp_path):
    path = tmp_path / "sneaky.py"
    path.write_text(
        "from rwkv_jax.training.config import default_config\n"
        "def get_config(arg=None):\n    c = default_config()\n"
        "    with c.unlocked():\n        c.train.stepz = 3\n    return c\n"
    )
    with pytest.raises(ValueError, match=r"'train\.stepz'.*train\.steps"):
        load_config(str(path))


def test_config_arg_rejects_unknown_variant_names():
    with pytest.raises(ValueError, match="nearest valid keys: size"):
        parse_arg("sise=3", size="finch-demo", runlocal=False)
    assert parse_arg("runlocal", size="x", runlocal=False).runlocal is True
