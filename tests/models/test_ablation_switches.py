"""The ablation switches of the model configs (issue 9): each non-published value changes the model (its
logits differ from the published model's with every shared parameter equal), keeps the model contract, has
the parameters it should, trains through ``rwkv_jax.training`` and cannot be saved as an official checkpoint;
every default is the published architecture (the official fixtures keep their reference logits:
``tests/checkpoint/test_official_v*.py``), and the plain initialisation is what it says.

Floats are compared by relative error over the tensor (:func:`rwkv_jax.numerics.relative_error`).
"""

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwkv_jax.checkpoint.official import load_official, save_official
from rwkv_jax.models import common
from rwkv_jax.models.family import families
from rwkv_jax.models.rwkv6.model import RWKV6Config
from rwkv_jax.models.rwkv7.model import RWKV7Config
from rwkv_jax.numerics import relative_error
from rwkv_jax.presets import get_preset
from rwkv_jax.training import loop
from rwkv_jax.training.binidx import write_binidx
from rwkv_jax.training.evaluate import load_run
from rwkv_jax.training.metrics import read_metrics
from tests.models.contract import (
    assert_gradients_reach_every_parameter,
    assert_official_round_trip,
    assert_prefill_equals_steps_and_pieces,
    jitted,
    random_tokens,
    randomize,
)
from tests.training.conftest import synthetic_text, tiny_config

SIZES = dict(n_embd=32, vocab_size=64, dtype="float32")  # two layers (the presets'), so block 1 exists


def _mix(prefix: str, names: str) -> set[str]:
    return {f"{prefix}{n}" for n in names}


FINCH_DDLERP = _mix("att.mix.time_maa_", ["x", *"wkvrg", "w1", "w2"])
DECAY_LORA = {"att.decay.time_decay_w1", "att.decay.time_decay_w2"}
GOOSE_ICLR = {"att.x_a", "att.a0", "att.a1", "att.a2", "att.k_k", "att.k_a"}

# (preset, non-published switches, parameter names removed, parameter names added). Names are dotted paths
# inside a block ("att.v0"; "att.mix.time_mix_k": Eagle/Finch's pluggable parts) or outside ("head.kernel").
CASES = [
    (
        "rwkv4-tiny",
        dict(token_shift=False),
        _mix("att.time_mix_", "kvr") | _mix("ffn.time_mix_", "kr"),
        set(),
    ),
    (
        "eagle-tiny",
        dict(token_shift=False),
        _mix("att.mix.time_mix_", "kvrg") | _mix("ffn.mix.time_mix_", "kr"),
        set(),
    ),
    (
        "eagle-tiny",
        dict(token_shift_mix="data_dependent"),
        _mix("att.mix.time_mix_", "kvrg"),
        FINCH_DDLERP - {"att.mix.time_maa_w"},
    ),
    ("eagle-tiny", dict(decay="data_dependent"), set(), {"att.mix.time_mix_w", *DECAY_LORA}),
    ("rwkv5.1-tiny", dict(decay="data_dependent"), set(), {"att.mix.time_mix_w", *DECAY_LORA}),
    ("finch-tiny", dict(token_shift=False), FINCH_DDLERP | _mix("ffn.mix.time_maa_", "kr"), set()),
    ("finch-tiny", dict(token_shift_mix="static"), FINCH_DDLERP, _mix("att.mix.time_mix_", "wkvrg")),
    ("finch-tiny", dict(decay="static"), {"att.mix.time_maa_w", *DECAY_LORA}, set()),
    ("goose-tiny", dict(token_shift=False), _mix("att.x_", "rwkvag") | {"ffn.x_k"}, set()),
    ("goose-tiny", dict(value_residual=False), {"att.v0", "att.v1", "att.v2"}, set()),
    ("goose-tiny", dict(delta_rule=False), GOOSE_ICLR, set()),
    ("goose-tiny", dict(bonus=False), {"att.r_k"}, set()),
    ("goose-tiny", dict(normalize_kk=False), set(), set()),
]
CASE_IDS = [
    f"{preset}-" + ",".join(f"{k}={v}" for k, v in switches.items()) for preset, switches, _, _ in CASES
]


def build(preset: str, **switches) -> nnx.Module:
    return get_preset(preset).build(seed=0, **SIZES, **switches)


def parameter_names(model: nnx.Module) -> set[str]:
    """Every parameter's dotted path, ``blocks.<i>.`` left out (``kernel`` kept)."""
    names = {".".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    return {re.sub(r"^blocks\.\d+\.", "", name) for name in names}


def transplant(source: nnx.Module, target: nnx.Module) -> nnx.Module:
    """``target`` with every parameter that ``source`` has at the same path and shape copied from it."""
    theirs = {path: v.get_value() for path, v in nnx.to_flat_state(nnx.state(source, nnx.Param))}
    graphdef, state = nnx.split(target)
    for path, variable in nnx.to_flat_state(state):
        if path in theirs and theirs[path].shape == variable.get_value().shape:
            variable.set_value(theirs[path])
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def case(request):
    """``(published model, ablated model, removed, added)``: the published model perturbed (``randomize``)
    and the ablated one perturbed, then given every parameter it shares with the published one."""
    preset, switches, removed, added = request.param
    published = randomize(build(preset))
    ablated = transplant(published, randomize(build(preset, **switches), seed=1))
    return published, ablated, removed, added


def test_a_switch_changes_the_logits(case):
    published, ablated, _, _ = case
    tokens = random_tokens(64, 2, 8)
    # Through `jitted`, as the contract test below: one program a model (the same one for the ablated model).
    assert relative_error(jitted(ablated)(tokens)[0], jitted(published)(tokens)[0]) > 1e-3


def test_a_switch_has_exactly_its_parameters(case):
    published, ablated, removed, added = case
    ours, theirs = parameter_names(ablated), parameter_names(published)
    assert theirs - ours == removed and ours - theirs == added


def test_a_switch_keeps_the_state_contract(case):
    _, ablated, _, _ = case
    # 8 tokens cut at 4: three programs (test_family_contract.py says why)
    assert_prefill_equals_steps_and_pieces(jitted(ablated), random_tokens(64, 2, 8), cut=4)


def test_gradients_reach_every_parameter_of_a_switched_model(case):
    _, ablated, _, _ = case
    assert_gradients_reach_every_parameter(ablated, random_tokens(64, 2, 8))


def test_a_non_published_model_is_not_saved_as_an_official_checkpoint(case, tmp_path):
    _, ablated, _, _ = case
    changed = ablated.config.unpublished_switches()
    assert changed and not ablated.config.is_published
    with pytest.raises(ValueError, match=r"published architecture only.*" + re.escape(changed[0])):
        save_official(ablated, tmp_path / "ablated.pth")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


# ---------------------------------------------------------------------------------- defaults: published


@pytest.mark.parametrize("family", families(), ids=lambda f: f.name)
def test_every_default_and_preset_is_the_published_architecture(family):
    assert family.config_class().is_published
    for name, fields in family.presets.items():
        assert family.make_config(**fields).is_published, name


def test_eagle_and_finch_switches_resolve_from_the_version():
    finch, eagle = RWKV6Config(version="6"), RWKV6Config(version="5.2")
    assert (finch.mix_kind, finch.decay_kind) == ("data_dependent", "data_dependent")
    assert (eagle.mix_kind, eagle.decay_kind) == ("static", "static")
    # An explicit published value is still the published architecture.
    assert RWKV6Config(version="5.2", decay="static", token_shift_mix="static").is_published
    assert not RWKV6Config(version="5.2", decay="data_dependent").is_published


@pytest.mark.parametrize("preset", ["rwkv4-tiny", "eagle-tiny", "finch-tiny", "goose-tiny"])
def test_the_official_layout_loads_back_into_the_published_architecture(preset, tmp_path):
    """Official files build configs with every switch at its default (the fixtures' reference logits are
    checked in tests/checkpoint); a plain-initialised model (not an architecture switch) saves and loads."""
    model = randomize(build(preset, init="plain"))
    assert_official_round_trip(model, random_tokens(64, 1, 5), tmp_path / "plain.pth")
    config = load_official(tmp_path / "plain.pth").config
    assert config.is_published and config == dataclasses.replace(config, **_defaults(type(config)))


def _defaults(config_class: type) -> dict[str, object]:
    """The declared default of every switch of ``config_class`` (the fields a size never sets)."""
    switches = (
        "token_shift",
        "token_shift_mix",
        "decay",
        "value_residual",
        "delta_rule",
        "bonus",
        "normalize_kk",
    )
    return {f.name: f.default for f in dataclasses.fields(config_class) if f.name in switches}


# ------------------------------------------------------------------------------------------ plain init


@pytest.mark.parametrize("preset", ["rwkv4-tiny", "eagle-tiny", "rwkv5.1-tiny", "finch-tiny", "goose-tiny"])
def test_plain_init_is_normal_matrices_and_constant_vectors(preset):
    """Every matrix ~ N(0, 0.02^2) (std within 25% at these sizes), every vector one constant per name: no
    layer- or channel-dependent formula left."""
    model = build(preset, init="plain")
    constants: dict[str, set[float]] = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(variable.get_value(), np.float64)
        name = re.sub(r"^blocks\.\d+\.", "", ".".join(map(str, path)))
        if value.ndim >= 2 and not name.endswith(("time_decay", "time_faaaa", "r_k")):
            assert abs(value.std() / common.PLAIN_STD - 1) < 0.25 and abs(value.mean()) < 0.01, name
        else:
            assert np.all(value == value.flat[0]), name
            constants.setdefault(name, set()).add(float(value.flat[0]))
    assert all(len(values) == 1 for values in constants.values()), constants  # the same in every layer
    mixes = {
        v
        for name, values in constants.items()
        if re.search(r"time_mix_|time_maa_|\.x_", name)
        for v in values
    }
    assert mixes == {common.PLAIN_MIX}


@pytest.mark.parametrize("preset", ["rwkv4-tiny", "eagle-tiny", "rwkv5.1-tiny", "finch-tiny", "goose-tiny"])
def test_plain_init_has_one_decay_of_0_9_per_token(preset):
    """The decay per token, ``exp(w_log)``, is PLAIN_DECAY for every channel (read from the model's own
    decay parametrisation: RWKV-4/5/6 ``-exp(time_decay)``, Goose ``-exp(-0.5) sigmoid(w0)``)."""
    model = build(preset, init="plain")
    att = model.blocks[1].att
    if hasattr(att, "w0"):
        w_log = -np.exp(-0.5) / (1 + np.exp(-np.asarray(att.w0[...], np.float64)))
    else:
        decay = att.decay.time_decay if hasattr(att, "decay") else att.time_decay
        w_log = -np.exp(np.asarray(decay[...], np.float64))
    plain = jnp.full(w_log.shape, common.PLAIN_DECAY)
    assert relative_error(jnp.asarray(np.exp(w_log)), plain) < 8e-8  # measured 8.0e-9


# ------------------------------------------------------------------------------------------ bad configs


@pytest.mark.parametrize(
    ("config_class", "fields", "message"),
    [
        (RWKV6Config, dict(decay="lora"), r"RWKV6Config.decay must be one of \(None, 'static', 'data_"),
        (RWKV6Config, dict(token_shift_mix="ddlerp"), r"RWKV6Config.token_shift_mix must be one of"),
        (RWKV6Config, dict(token_shift="no"), r"RWKV6Config.token_shift must be True or False"),
        (RWKV6Config, dict(init="xavier"), r"RWKV6Config.init must be one of \('official', 'plain'\)"),
        (RWKV6Config, dict(token_shift=False, token_shift_mix="static"), r"token_shift_mix='static' has no"),
        (RWKV7Config, dict(bonus=0), r"RWKV7Config.bonus must be True or False"),
        (RWKV7Config, dict(delta_rule=False, normalize_kk=False), r"normalize_kk=False has no effect"),
    ],
)
def test_bad_switches_raise_errors_naming_the_field(config_class, fields, message):
    with pytest.raises(ValueError, match=message):
        config_class(n_embd=32, vocab_size=64, head_size=16, **fields)


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(train, val) byte-level binidx prefixes, as the training tests' corpus."""
    root = tmp_path_factory.mktemp("corpus")
    docs = [np.frombuffer(synthetic_text(seed, 1500) + b"\0", np.uint8) for seed in range(2)]
    write_binidx(root / "train", docs, np.uint8)
    write_binidx(root / "val", [np.frombuffer(synthetic_text(99, 300) + b"\0", np.uint8)], np.uint8)
    return str(root / "train"), str(root / "val")


@pytest.mark.parametrize(
    ("family", "switches", "absent"),
    [
        ("rwkv4", dict(token_shift=False), "att.time_mix_k"),
        ("rwkv6", dict(decay="static", init="plain"), "att.decay.time_decay_w1"),
        ("rwkv7", dict(delta_rule=False, value_residual=False), "att.a0"),
    ],
)
def test_a_switched_model_trains_from_the_training_config(corpus, tmp_path, family, switches, absent):
    config = tiny_config(corpus, family=family)
    config.model.n_layer = 2  # so that Goose's value residual (blocks 1 on) exists to be switched off
    for name, value in switches.items():
        setattr(config.model, name, value)
    config.ckpt.every = config.train.steps  # one checkpoint, at the end
    loop.train_and_evaluate(config, tmp_path / "run")
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    fns, params, _, _ = load_run(tmp_path / "run")
    trained = fns.module(params)
    assert all(getattr(trained.config, name) == value for name, value in switches.items())
    assert absent not in parameter_names(trained) and not trained.config.is_published
