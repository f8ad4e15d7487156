"""Prefix states: continuations branched from a cached prefix state equal those of the full prompts."""

import pytest

from rwkv_jax.branching import branch, prefix_state
from rwkv_jax.generation import generate
from rwkv_jax.presets import get_preset

PREFIX = [5, 17, 200, 3, 3, 41, 99]
SUFFIXES = [[], [7], [8, 9, 10]]


def test_branches_from_a_cached_prefix_state_equal_the_full_prompts_token_for_token():
    # Sampled (one compile; greedy is the same path): equal draws need equal logits at every step.
    sampling = dict(temperature=1.0, top_k=20, seed=3)
    model = get_preset("goose-tiny").build(init="plain", wkv_impl="recurrent")
    cached = prefix_state(model, PREFIX)
    branched = branch(model, PREFIX, SUFFIXES, 6, state=cached, **sampling)
    full = generate(model, [PREFIX + s for s in SUFFIXES], 6, **sampling)
    assert branched.tokens == full.tokens
    assert len(set(map(tuple, branched.tokens))) > 1  # the rows did branch


def test_branch_refuses_a_batched_state_and_no_suffixes():
    model = get_preset("goose-tiny").build(init="plain", wkv_impl="recurrent")
    with pytest.raises(ValueError, match="batch 1"):
        branch(model, PREFIX, [[1], [2]], 2, state=model.init_state(2))
    with pytest.raises(ValueError, match="suffixes must be a non-empty list"):
        branch(model, PREFIX, [], 2)
