"""The optimiser as RWKV-LM trains: AdamW with weight decay on 2-D matrices only, warmup then decay,
global-norm clipping and gradient accumulation (optax.MultiSteps).

RWKV-LM puts weight decay on the ``*.weight`` matrices (embedding, projections, head) and none on the
per-channel vectors (time_mix/maa, time_decay, time_first/faaaa, layer norms) nor on the LoRA matrices of
Finch (``time_maa_w1/w2``, ``time_decay_w1/w2``). Here the same rule reads the parameters' shapes and logical
axes: decay iff the parameter is 2-D and none of its axes is in ``exclude_axes`` (``("lora",)`` by default).
"""

from collections.abc import Sequence
from typing import Any

import jax
import optax

from rwkv_jax.models.layer_stack import LAYERS_AXIS
from rwkv_jax.training.config import ConfigDict


def learning_rate_schedule(
    lr: float, total_updates: int, warmup: int, kind: str = "cosine", final_ratio: float = 0.1
) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup`` updates, then ``kind`` decay to ``lr * final_ratio``.

    kind: "cosine", "linear" or "constant" (stays at ``lr``).
    """
    warmup = min(warmup, total_updates)
    decay_steps = max(total_updates - warmup, 1)
    final = lr * final_ratio
    if kind == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=final_ratio)
    elif kind == "linear":
        decay = optax.linear_schedule(lr, final, decay_steps)
    elif kind == "constant":
        decay = optax.constant_schedule(lr)
    else:
        raise ValueError(f"unknown schedule {kind!r}; expected 'cosine', 'linear' or 'constant'")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def weight_decay_mask(
    logical_axes: Any, shapes: Any, exclude_axes: Sequence[str] = ("lora", "head_dim")
) -> Any:
    """A pytree of bools (same structure as ``shapes``): True where weight decay applies.

    RWKV-LM decays the 2-D ``*.weight`` tensors (linear layers, embedding, head) only; the other 2-D
    parameters are LoRA matrices (logical axis ``lora``) and per-head vectors such as the bonus
    ``time_faaaa`` or RWKV-7's ``r_k`` (``head_dim``), hence the default exclusions.

    Args:
      logical_axes: pytree of per-parameter tuples of logical axis names (None where a parameter has none).
      shapes: pytree of arrays or ShapeDtypeStructs with the same structure.
      exclude_axes: logical axes whose 2-D parameters get no decay.
    """
    excluded = set(exclude_axes)

    def decays(axes: tuple | None, leaf: Any) -> bool:
        axes = axes or ()
        per_layer_ndim = len(leaf.shape) - (axes[:1] == (LAYERS_AXIS,))  # a stacked parameter: one layer's
        return per_layer_ndim == 2 and not excluded.intersection(axes)

    return jax.tree.map(decays, logical_axes, shapes, is_leaf=lambda x: x is None or isinstance(x, tuple))


def make_optimizer(
    optim: ConfigDict, total_steps: int, decay_mask: Any
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW from the ``config.optim`` section and its learning-rate schedule (a function of the update).

    ``total_steps`` counts micro-batches. With ``accum_steps = k`` the transformation averages k successive
    gradients and updates once (optax.MultiSteps), so the schedule runs over ``total_steps // k`` updates.
    """
    if optim.accum_steps < 1:
        raise ValueError(f"optim.accum_steps must be >= 1, got {optim.accum_steps}")
    updates = max(total_steps // optim.accum_steps, 1)
    schedule = learning_rate_schedule(
        optim.lr, updates, optim.warmup_steps, optim.schedule, optim.final_lr_ratio
    )
    chain = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm > 0 else []
    chain.append(
        optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=decay_mask,
        )
    )
    tx = optax.chain(*chain)
    if optim.accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim.accum_steps)
    return tx, schedule
