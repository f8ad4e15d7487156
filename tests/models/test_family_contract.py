"""The model contract on every registered family (its ``*-tiny`` presets): prefill = token by token = two
pieces with the state carried, official save/load round trip, gradients reach every parameter, plain jax.jit.
A family added to the registry is checked here with no edit."""

import pytest

from rwkv_jax.presets import get_preset
from tests.models.contract import (
    assert_gradients_reach_every_parameter,
    assert_official_round_trip,
    assert_plain_jit_matches_eager,
    assert_prefill_equals_steps_and_pieces,
    jitted,
    random_tokens,
    randomize,
    tiny_presets,
)


@pytest.fixture(scope="module", params=tiny_presets())
def model(request):
    """A tiny float32 model of one registered family (narrowed to 32 channels and 64 tokens, which every
    family has), every parameter perturbed (see ``randomize``)."""
    return randomize(get_preset(request.param).build(seed=0, dtype="float32", n_embd=32, vocab_size=64))


def test_prefill_equals_one_token_at_a_time_and_two_pieces(model):
    # 8 tokens cut at 4: the pieces share one program, three compilations (9 cut at 4 took four); the tiny
    # presets' chunks (16-64) exceed every length here, so the chunked calls pad a partial chunk either way.
    tokens = random_tokens(model.config.vocab_size, 2, 8)
    assert_prefill_equals_steps_and_pieces(jitted(model), tokens, cut=4)


def test_official_save_and_load_round_trip_bit_for_bit(model, tmp_path):
    assert_official_round_trip(model, random_tokens(model.config.vocab_size, 1, 5), tmp_path / "model.pth")


def test_gradients_are_finite_and_reach_every_parameter(model):
    assert_gradients_reach_every_parameter(model, random_tokens(model.config.vocab_size, 2, 8))


def test_plain_jax_jit_of_the_module_matches_eager(model):
    assert_plain_jit_matches_eager(model, random_tokens(model.config.vocab_size, 2, 4))
