"""The jitted train and eval steps, laid out on a device mesh.

``train_step(params, opt_state, batch [B, T + 1]) -> (params, opt_state, metrics)`` with in/out shardings
from the logical-axis rules (``rwkv_jax.sharding``): parameters and optimiser state are sharded as the rules
say, the batch along ``data``/``fsdp``, the metrics replicated. Parameters and optimiser state are float32;
the model computes in its configured dtype (bfloat16 for training) with a float32 WKV state.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from rwkv_jax import sharding
from rwkv_jax.array_typing import Array
from rwkv_jax.training import data
from rwkv_jax.training.model import ModelFns
from rwkv_jax.training.segments import sequence_loss


def make_train_step(
    fns: ModelFns,
    tx: optax.GradientTransformation,
    *,
    segment_len: int = 0,
    truncate: bool = False,
    l2wrap: float = 0.0,
    document_starts: bool = False,
    batch_spec: PartitionSpec | None = None,
) -> Callable:
    """The (unjitted) train step: one micro-batch, one call of ``tx.update`` (which may only accumulate).

    ``train_step(params, opt_state, batch, frozen=None)``: ``frozen`` holds the parameters a fine-tuning
    keeps fixed (:meth:`ModelFns.split_trainable`); the gradient is taken with respect to ``params`` only.

    metrics: ``loss`` (mean cross entropy, nats/token), ``objective`` (loss plus L2Wrap penalty) and
    ``grad_norm`` (global norm of this micro-batch's gradient, before clipping).

    ``document_starts``: the state returns to the initial state at every document start of a window
    (``data.document_starts``); whole windows only (no ``segment_len``: a segment's call would reset to the
    state carried into it).

    ``batch_spec``: the batch's PartitionSpec (:func:`rwkv_jax.sharding.batch_spec`; the step is traced under
    its mesh, :func:`jit_train_step`): the inputs and targets cut from the batch are constrained to it (left
    to itself, the partitioner gave the ``T``-token slices of the ``T + 1``-token rows another sharding and
    resharded them: XLA's warning at compile time), and so are the model's activations between blocks
    (:func:`rwkv_jax.sharding.keep_batch_sharded`). None: no constraint.
    """
    if document_starts and segment_len:
        raise ValueError("document_starts needs whole windows: set segment_len to 0 (segments.length)")

    def train_step(
        params: Any, opt_state: Any, batch: Array, frozen: Any = None
    ) -> tuple[Any, Any, dict[str, Array]]:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        if batch_spec is not None:
            inputs, targets = (jax.lax.with_sharding_constraint(x, batch_spec) for x in (inputs, targets))
        starts = data.document_starts(inputs) if document_starts else None

        def apply(params: Any, tokens: Array, state: Any) -> tuple[Array, Any]:
            return fns.apply(params, tokens, state, frozen, starts)

        def objective(params: Any) -> tuple[Array, Array]:
            state = fns.init_state(params, batch.shape[0], frozen)
            return sequence_loss(
                apply,
                params,
                inputs,
                targets,
                state,
                segment_len=segment_len,
                truncate=truncate,
                l2wrap=l2wrap,
            )

        with sharding.batch_sharded_activations(batch_spec or PartitionSpec()):
            (value, nll_sum), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": nll_sum / targets.size, "objective": value, "grad_norm": optax.tree.norm(grads)}
        return params, opt_state, metrics

    return train_step


def train_step_of(config: Any, fns: ModelFns, tx: optax.GradientTransformation) -> Callable:
    """:func:`make_train_step` with the settings a training config names (segments, L2Wrap, document starts):
    what the training loop runs and what ``experiments/memory_plan.py`` compiles."""
    return make_train_step(
        fns,
        tx,
        segment_len=config.segments.length,
        truncate=config.segments.truncate,
        l2wrap=config.loss.l2wrap,
        document_starts=config.data.document_starts,
        batch_spec=sharding.batch_spec(config.sharding_rules),
    )


def make_eval_step(
    fns: ModelFns, document_starts: bool = False, batch_spec: PartitionSpec | None = None
) -> Callable:
    """``eval_step(params, batch [B, T + 1], frozen=None) -> nll [B, T]`` (float32 nats per target token);
    ``document_starts`` and ``batch_spec`` (activations kept batch-sharded) as in :func:`make_train_step`."""

    def eval_step(params: Any, batch: Array, frozen: Any = None) -> Array:
        from rwkv_jax.training.loss import token_nll

        inputs = batch[:, :-1]
        starts = data.document_starts(inputs) if document_starts else None
        with sharding.batch_sharded_activations(batch_spec or PartitionSpec()):
            logits, _ = fns.apply(params, inputs, None, frozen, starts)
        return token_nll(logits, batch[:, 1:])

    return eval_step


def under_mesh(step: Callable, mesh: Any) -> Callable:
    """``step`` traced with ``mesh`` as the abstract mesh, so that the WKV recurrences see its ``context``
    axis and split their time axis over it (:mod:`rwkv_jax.wkv.context`)."""

    @functools.wraps(step)
    def traced(*args: Any) -> Any:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return step(*args)

    return traced


def jit_train_step(
    train_step: Callable,
    param_shardings: Any,
    opt_shardings: Any,
    batch_sharding: NamedSharding,
    frozen_shardings: Any = None,
) -> Callable:
    """jit with explicit in/out shardings; parameters and optimiser state are donated (updated in place).
    ``frozen_shardings``: those of the frozen parameters, the 4th argument (a fine-tuning; None: none)."""
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    frozen = () if frozen_shardings is None else (frozen_shardings,)
    return jax.jit(
        under_mesh(train_step, batch_sharding.mesh),
        in_shardings=(param_shardings, opt_shardings, batch_sharding, *frozen),
        out_shardings=(param_shardings, opt_shardings, replicated),
        donate_argnums=(0, 1),
    )


def jit_eval_step(
    eval_step: Callable, param_shardings: Any, batch_sharding: NamedSharding, frozen_shardings: Any = None
) -> Callable:
    """jit of the eval step with the parameters', the batch's (and the frozen parameters') shardings."""
    frozen = () if frozen_shardings is None else (frozen_shardings,)
    return jax.jit(
        under_mesh(eval_step, batch_sharding.mesh),
        in_shardings=(param_shardings, batch_sharding, *frozen),
        out_shardings=batch_sharding,
    )


def optimizer_state_shardings(
    tx: optax.GradientTransformation, params: Any, param_shardings: Any, mesh: Any
) -> Any:
    """Shardings of ``tx.init(params)``: each moment like its parameter, counters and the like replicated."""
    abstract = jax.eval_shape(tx.init, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(
        tx, lambda _, sharding: sharding, abstract, param_shardings, transform_non_params=lambda _: replicated
    )
