"""Context parallelism: a WKV recurrence whose time axis is sharded over the ``context`` mesh axis.

The state recurrence is affine in the state given the inputs: one shard of tokens maps its incoming state
``S`` to ``S -> apply(P, S) + F`` where ``F`` is the shard's final state from zeros and ``P`` its transition
(WKV-5/6, ``S_t = diag(w_t) S_{t-1} + k_t v_t^T``: ``P = prod_t w_t``, a per-key-channel column ``[B, H, N,
1]``; WKV-7, ``S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T``: ``P`` the ``[B, H, N, N]`` product of the
step matrices, the final state of the same form run from the identity with ``v = 0``). Each device runs its
shard from zeros to get ``(P, F)``; the pairs of all devices are gathered along ``context`` and combined with
``lax.associative_scan`` (log depth, no loop over devices); each device then runs its shard again from its
incoming state, which gives outputs and final state exactly (no division by a decay anywhere, so decays
near 0 and 1 stay exact). Gradients flow back through the collectives by autodiff.

The WKV call sees the mesh set with ``jax.set_mesh``: when it has a ``context`` axis of size > 1 and the call
has no document-start mask, :func:`sharded_over_context` wraps the form in a ``shard_map`` over ``context``
only (the other mesh axes stay automatic). Token shift crosses shard edges with :func:`shift_over_context`
(one ``ppermute`` of each shard's last token).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from rwkv_jax.array_typing import Array

CONTEXT_AXIS = "context"

Map = tuple[Array, Array]  # (P, F): state S -> apply(P, S) + F


@dataclasses.dataclass(frozen=True)
class Transition:
    """How one family's shard maps its incoming state.

    Attributes:
      of_shard: ``of_shard(run, args, zeros) -> (P, F)``: ``run(*args, state) -> (y, final)`` is the form on
        this shard, ``zeros`` the empty state ``[B, H, N, N]``; ``F`` is the final state from zeros.
      apply: ``apply(P, S) -> S'`` (linear part of the map; ``S`` a state or an ``F``).
      compose: ``compose(P_1, P_2)``: the linear part of "``P_1`` then ``P_2``".
    """

    of_shard: Callable[[Callable[..., tuple[Array, Array]], tuple[Array, ...], Array], Map]
    apply: Callable[[Array, Array], Array]
    compose: Callable[[Array, Array], Array]


def context_size() -> int:
    """The size of the ``context`` axis of the mesh set with ``jax.set_mesh`` (1 when there is none)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or CONTEXT_AXIS not in mesh.axis_names or CONTEXT_AXIS in mesh.manual_axes:
        return 1
    return mesh.shape[CONTEXT_AXIS]


def sharded_over_context(
    run: Callable[..., tuple[Array, Array]], transition: Transition, time_args: tuple[bool, ...]
) -> Callable[..., tuple[Array, Array]]:
    """``run(*args, state) -> (y, final)`` with each ``[B, T, ...]`` input sharded over ``context`` on T.

    ``time_args``: which positional inputs have a time axis (axis 1); the others and ``state [B, H, N, N]``
    are whole on every device. ``y`` comes back sharded like the inputs, the final state whole.
    """
    in_specs = tuple(PartitionSpec(None, CONTEXT_AXIS) if timed else PartitionSpec() for timed in time_args)

    def local(*args_and_state: Array) -> tuple[Array, Array]:
        *args, state = args_and_state
        pair = transition.of_shard(run, tuple(args), jnp.zeros_like(state))
        incoming, final = _incoming_state(pair, state, transition)
        y, _ = run(*args, incoming)
        return y, final

    return jax.shard_map(
        local,
        in_specs=(*in_specs, PartitionSpec()),
        out_specs=(PartitionSpec(None, CONTEXT_AXIS), PartitionSpec()),
        axis_names={CONTEXT_AXIS},
        check_vma=False,
    )


def _incoming_state(pair: Map, initial: Array, transition: Transition) -> tuple[Array, Array]:
    """This device's incoming state and the whole sequence's final state, from every device's ``(P, F)``."""

    def compose(first: Map, then: Map) -> Map:
        (p_1, f_1), (p_2, f_2) = first, then
        return transition.compose(p_1, p_2), transition.apply(p_2, f_1) + f_2

    gathered = jax.tree.map(lambda x: jax.lax.all_gather(x, CONTEXT_AXIS), pair)  # [D, ...] each
    p, f = jax.lax.associative_scan(jax.vmap(compose), gathered)  # inclusive prefixes
    after = jax.vmap(lambda p_d, f_d: transition.apply(p_d, initial) + f_d)(p, f)  # state after device d
    index = jax.lax.axis_index(CONTEXT_AXIS)
    before = jnp.concatenate([initial[None], after[:-1]])
    return before[index], after[-1]


def diagonal_transition(decay_log_index: int) -> Transition:
    """WKV-5/6: ``P`` is the product of the decays of the shard, ``[B, H, N, 1]`` (key channels)."""

    def of_shard(run: Callable[..., tuple[Array, Array]], args: tuple[Array, ...], zeros: Array) -> Map:
        w_log = args[decay_log_index].astype(zeros.dtype)
        _, final = run(*args, zeros)
        return jnp.exp(w_log.sum(axis=1))[..., None], final

    return Transition(of_shard=of_shard, apply=lambda p, s: p * s, compose=lambda p_1, p_2: p_1 * p_2)


def matrix_transition(value_index: int) -> Transition:
    """WKV-7 (state ``[value, key]``): ``P [B, H, N, N]`` from one run of the batch doubled: the shard from
    zeros, and the shard from the identity with ``v = 0`` (whose final state is the product of the steps)."""

    def of_shard(run: Callable[..., tuple[Array, Array]], args: tuple[Array, ...], zeros: Array) -> Map:
        batch = args[0].shape[0]
        doubled = tuple(
            jnp.concatenate([x, jnp.zeros_like(x) if i == value_index else x]) for i, x in enumerate(args)
        )
        identity = jnp.broadcast_to(jnp.eye(zeros.shape[-1], dtype=zeros.dtype), zeros.shape)
        _, finals = run(*doubled, jnp.concatenate([zeros, identity]))
        return finals[batch:], finals[:batch]

    return Transition(of_shard=of_shard, apply=lambda p, s: s @ p, compose=lambda p_1, p_2: p_1 @ p_2)


def shift_over_context(x: Array, first: Array) -> Array:
    """``x [B, T, C]`` shifted one step back in time with T split over ``context``: each device's first
    token is the previous device's last (one ``ppermute``), device 0's is ``first [B, 1, C]``."""
    devices = context_size()

    def local(x: Array, first: Array) -> Array:
        incoming = jax.lax.ppermute(x[:, -1:], CONTEXT_AXIS, [(d, d + 1) for d in range(devices - 1)])
        head = jnp.where(jax.lax.axis_index(CONTEXT_AXIS) == 0, first, incoming)
        return jnp.concatenate([head, x[:, :-1]], axis=1)

    return jax.shard_map(
        local,
        in_specs=(PartitionSpec(None, CONTEXT_AXIS), PartitionSpec()),
        out_specs=PartitionSpec(None, CONTEXT_AXIS),
        axis_names={CONTEXT_AXIS},
        check_vma=False,
    )(x, first)
