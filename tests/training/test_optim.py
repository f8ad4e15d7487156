"""The optimiser: weight decay on 2-D matrices only, the schedule's shape, accumulation = one big batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rwkv_jax.numerics import relative_error
from rwkv_jax.training.config import default_config
from rwkv_jax.training.model import ModelFns, build_model
from rwkv_jax.training.optim import learning_rate_schedule, make_optimizer, weight_decay_mask


def finch_tiny_params():
    model = default_config().model
    model.n_layer, model.n_embd, model.head_size = 1, 32, 16
    model.time_mix_extra_dim, model.time_decay_extra_dim = 4, 8
    return ModelFns.split(build_model(model, seed=0))


def test_weight_decay_only_on_2d_weights_as_rwkv_lm_not_lora_or_per_head_vectors():
    fns, params = finch_tiny_params()
    mask = weight_decay_mask(fns.logical_axes, params)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}
    shapes = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(params)}
    axes = {
        jax.tree_util.keystr(k): v
        for k, v in jax.tree_util.tree_leaves_with_path(
            fns.logical_axes, is_leaf=lambda x: isinstance(x, tuple)
        )
    }
    assert any(flat.values()) and not all(flat.values())
    for name, decays in flat.items():
        excluded = {"lora", "head_dim"}.intersection(axes.get(name) or ())
        assert decays == (len(shapes[name]) == 2 and not excluded), name
    decayed = [n for n, d in flat.items() if d]
    assert any("emb" in n for n in decayed) and any("head" in n for n in decayed)
    assert not any("time_decay" in n and len(shapes[n]) == 1 for n in decayed)
    assert not any("time_faaaa" in n for n in decayed)  # [H, N], not a ".weight" in RWKV-LM


def test_schedule_warms_up_linearly_then_decays_to_the_final_ratio():
    for kind in ("cosine", "linear"):
        schedule = learning_rate_schedule(1.0, total_updates=110, warmup=10, kind=kind, final_ratio=0.1)
        warmup = [schedule(0), schedule(5), schedule(10)]
        # measured 0 for both (1e-7 is a floor)
        assert relative_error(warmup, [0.0, 0.5, 1.0]) <= 1e-7
        assert relative_error(schedule(110), 0.1) <= 1e-7
        assert schedule(60) < 1.0 and schedule(60) > 0.1
    np.testing.assert_allclose(learning_rate_schedule(1.0, 10, 0, "constant")(7), 1.0)
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        learning_rate_schedule(1.0, 10, 0, "cosin")


def test_accumulating_k_micro_batches_equals_one_update_on_their_mean_gradient():
    params = {"w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3), "b": jnp.ones(3, jnp.float32)}
    mask = {"w": True, "b": False}
    optim = default_config().optim
    optim.weight_decay, optim.warmup_steps, optim.schedule = 0.1, 0, "constant"
    grads = [jax.tree.map(lambda p, i=i: jnp.sin(p + i), params) for i in range(3)]

    optim.accum_steps = 3
    tx, _ = make_optimizer(optim, 3, mask)
    state, accumulated = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, accumulated)
        accumulated = optax.apply_updates(accumulated, updates)

    optim.accum_steps = 1
    tx, _ = make_optimizer(optim, 1, mask)
    mean = jax.tree.map(lambda *g: sum(g) / 3, *grads)
    updates, _ = tx.update(mean, tx.init(params), params)
    expected = optax.apply_updates(params, updates)
    for key in params:  # measured: 0 (bit-equal; 1e-7 is a floor)
        assert relative_error(accumulated[key], expected[key]) <= 1e-7, key
