"""Every config value is checked before work starts: a bad value is an error that names the field and what
is valid, raised by ``load_config``'s ``validate`` and again at the start of ``train_and_evaluate`` (before
the workdir, the data, the model or any compilation)."""

import re

import pytest

from rwkv_jax.training import loop
from rwkv_jax.training.config import ConfigError, validate

from .conftest import tiny_config, tiny_model_section

# (field, bad value, the part of the message that says what is valid). Field "model.*" values go to the
# family's config class; "rwkv7:" / "rwkv6:" pick the family of the tiny model first.
BAD_VALUES = [
    ("seed", -1, ">= 0"),
    ("data.seq_len", 0, ">= 1"),
    ("data.batch_size", -2, ">= 1"),
    ("data.prepare", "tinystories", "'shakespeare'"),
    ("optim.lr", 0.0, "> 0"),
    ("optim.lr", float("nan"), "> 0"),
    ("optim.final_lr_ratio", 1.5, "in [0, 1]"),
    ("optim.warmup_steps", -3, ">= 0"),
    ("optim.schedule", "exponential", "'cosine'"),
    ("optim.b2", 1.2, "in [0, 1]"),
    ("optim.eps", 0.0, "> 0"),
    ("optim.clip_norm", -1.0, ">= 0"),
    ("optim.accum_steps", 0, ">= 1"),
    ("optim.accum_steps", 4, "train.steps"),  # 6 steps do not divide into updates of 4
    ("loss.l2wrap", -1e-4, ">= 0"),
    ("segments.length", 5, "divisor of data.seq_len (16)"),
    ("train.max_seconds", -1.0, ">= 0"),
    ("train.steps", 0, ">= 1"),
    ("train.log_every", 0, ">= 1"),
    ("ckpt.every", -1, ">= 0"),
    ("ckpt.keep", 0, ">= 1"),
    ("eval.batches", 0, ">= 1"),
    ("eval.temperature", -0.5, ">= 0"),
    ("mesh.data", 0, "-1"),
    ("mesh.tensor", 3, "divides the 1 devices"),
    ("mesh.data", 2, "equal to the number of devices, 1"),
    ("mesh.fsdp", -1, "at most one axis"),  # with data = -1 too
    ("distributed.process_id", 2, "< distributed.num_processes"),
    ("rwkv6:model.chunk_size", 24, "power of 2"),  # WKV-6's chunked form
    ("rwkv7:model.chunk_size", 99, "at most 98"),  # chunk_size * exp(-0.5) <= 60
    ("rwkv7:model.chunk_size", 128, "at most 98"),
    ("rwkv7:model.n_embd", 40, "multiple of head_size"),  # the family's config class
    ("rwkv6:model.head_size", 0, "positive integer"),
]


def with_value(corpus: tuple[str, str], target: str, value: object):
    family, _, field = target.rpartition(":")
    config = tiny_config(corpus)
    if family:
        config.model = tiny_model_section(family)
        config.model.wkv_impl = "chunked"
    *parents, leaf = field.split(".")
    holder = config
    for name in parents:
        holder = holder[name]
    with holder.unlocked():
        holder[leaf] = value
    return config, field


@pytest.mark.parametrize(("target", "value", "valid"), BAD_VALUES, ids=[f"{t}={v}" for t, v, _ in BAD_VALUES])
def test_a_bad_value_is_refused_before_work_naming_the_field_and_what_is_valid(
    corpus, tmp_path, target, value, valid
):
    config, field = with_value(corpus, target, value)
    leaf = field.rpartition(".")[2] if field.startswith("model.") else field
    # Mesh sizes against the devices are checked at the start of a run; the rest when the file loads too.
    if "devices" not in valid:
        with pytest.raises(ConfigError, match=re.escape(leaf)) as loaded:
            validate(config)
        assert valid in str(loaded.value)
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=re.escape(leaf)) as started:
        loop.train_and_evaluate(config, workdir)
    assert valid in str(started.value)
    assert not workdir.exists()  # nothing was done: no workdir, no config.json, no checkpoints


@pytest.mark.parametrize("family", ["rwkv6", "rwkv7"])
def test_the_largest_valid_chunk_size_is_accepted(corpus, family):
    largest = {"rwkv6": 64, "rwkv7": 98}[family]
    config, _ = with_value(corpus, f"{family}:model.chunk_size", largest)
    validate(config, device_count=1)


def test_an_empty_train_path_is_an_error_at_the_start_of_a_run_only(corpus, tmp_path):
    config = tiny_config(corpus)
    config.data.train_path = ""  # a config file may leave the path to --config.data.train_path
    validate(config)
    with pytest.raises(ConfigError, match=r"data\.train_path"):
        loop.train_and_evaluate(config, tmp_path / "run")
