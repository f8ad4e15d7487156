"""Resuming refuses intact checkpoints of another parameter layout instead of setting them aside as corrupt
(which would restart the run from scratch)."""

import warnings

import jax.numpy as jnp
import pytest

from rwkv_jax.training.checkpointing import CheckpointLayoutError, Checkpoints

PER_LAYER = {"blocks": {0: {"w": jnp.ones((2, 3))}, 1: {"w": jnp.ones((2, 3))}}}
STACKED = {"blocks": {0: {"layers": {"w": jnp.ones((2, 2, 3))}}}}
OPT = {"count": jnp.zeros((), jnp.int32)}


def test_a_checkpoint_of_another_layout_is_an_error_that_keeps_it(tmp_path):
    Checkpoints(tmp_path).save(4, PER_LAYER, OPT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no CorruptCheckpointWarning: nothing is set aside
        with pytest.raises(CheckpointLayoutError, match=r"missing: \['blocks.0.layers.w'\].*blocks.1.w"):
            Checkpoints(tmp_path).restore_latest(STACKED, OPT)
    assert Checkpoints(tmp_path).complete_steps() == [4]


def test_a_checkpoint_of_the_same_layout_restores(tmp_path):
    Checkpoints(tmp_path).save(2, STACKED, OPT)
    step, params, _ = Checkpoints(tmp_path).restore_latest(STACKED, OPT)
    assert step == 2 and params["blocks"][0]["layers"]["w"].shape == (2, 2, 3)
