"""Config files load (every preset of their family), and misspelt keys fail naming the nearest valid ones."""

import pathlib

import pytest

from rwkv_jax.presets import PRESETS
from rwkv_jax.training.config import apply_override, apply_overrides, default_config, load_config, parse_arg

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
FAMILY_OF_CONFIG = {"pile_rwkv4.py": "rwkv4", "world_rwkv6.py": "rwkv6", "shakespeare_finch.py": "rwkv6"}


def test_every_config_file_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.py")) == sorted(FAMILY_OF_CONFIG)


@pytest.mark.parametrize("name", sorted(FAMILY_OF_CONFIG))
@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_config_loads_with_its_default_and_runlocal(name, arg):
    config = load_config(f"{CONFIGS / name}:{arg}")
    assert config.model.family == FAMILY_OF_CONFIG[name]
    assert config.train.steps > 0 and config.data.seq_len > 0


@pytest.mark.parametrize(
    "name,preset",
    [(n, p) for n, fam in FAMILY_OF_CONFIG.items() for p, spec in PRESETS.items() if spec.family == fam],
)
def test_config_loads_every_preset_of_its_family(name, preset):
    config = load_config(f"{CONFIGS / name}:size={preset}")
    spec = PRESETS[preset]
    assert (config.model.n_layer, config.model.n_embd) == (spec.n_layer, spec.n_embd)
    assert (config.model.vocab_size, config.model.version) == (spec.vocab_size, spec.version)


def test_paper_presets_have_published_sizes():
    assert (PRESETS["rwkv4-14b"].n_layer, PRESETS["rwkv4-14b"].n_embd) == (40, 5120)
    assert (PRESETS["eagle-7b"].n_layer, PRESETS["eagle-7b"].n_embd, PRESETS["eagle-7b"].head_size) == (
        32,
        4096,
        64,
    )
    assert (PRESETS["finch-3b1"].n_layer, PRESETS["finch-3b1"].n_embd, PRESETS["finch-3b1"].vocab_size) == (
        32,
        2560,
        65536,
    )
    assert PRESETS["finch-1b6"].ffn_dim == 7168 and PRESETS["rwkv4-169m"].ffn_dim == 3072


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
