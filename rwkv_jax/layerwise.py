"""The step on CPU as a few small compiled programs (embedding, blocks, head) called in turn.

Three kinds of program: the embedding (with block 0's ``ln0`` where the family has one); a group of
consecutive blocks; ``ln_out`` + head (on every position, or on the last alone). Without its ``ln0``,
block 0 has the structure of the blocks after it, so one block program serves every layer of a uniform
model, and its compile does not grow with depth. The numbers are the whole program's (the same operations
per block; bit-equal where both use the same emitter).

Why not one program. A one-token step compiled whole holds every layer's copy of the block in its program
(a Python loop over layers), and compiling it takes memory that grows with depth: Finch 12 x 768 compiled
~100 MiB above the weights, the largest part of the decoding peak after the weights and the imports. A scan
over the stored stacks reads each layer's weights through a slice that XLA:CPU copies into a fresh buffer
(one layer's weights per step: decoding ~2x slower, a 512-token prefill ~4 % slower; docs/speed.md). The
pieces read the per-layer views of the stacks, with no copy.

What it costs: every program is a launch, and XLA:CPU cannot start a layer before the program holding the
layer before it has finished. At one token that is felt: groups of 3 blocks a program get back half of what
one block a program loses against the whole program, for a compile 3 blocks big. A prompt's blocks are long
enough that one block a program runs as fast as groups (docs/speed.md has the A/Bs).

One-token pieces are compiled without XLA:CPU's fusion emitters (``xla_cpu_use_fusion_emitters``; the
elemental emitter instead), a per-program option, not a process-wide flag: a block compiles in about a
quarter of the memory at the same decode speed. A prompt's pieces keep XLA's default emitters, with which a
512-token block compiles faster.

Used for models whose forward is :class:`rwkv_jax.models.language_model.LanguageModel`'s own (``emb ->
blocks -> ln_out -> head``, block 0 applying its ``ln0`` first where it has one), each block called through
the model's ``call_block`` (``x`` from block to block; RWKV-7 passes ``(x, v_first)``, and its block 0,
which makes ``v_first``, has a program of its own). A model whose ``layerwise_decoding`` is False (RWKV-7)
runs its one-token calls as the whole program (:mod:`rwkv_jax.decoding`), its prompts layer by layer.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.array_typing import Array, Tokens

# Consecutive blocks a program and per-program XLA options, for one-token steps and for prompts (module
# docstring; the measurements are in docs/speed.md). One token: groups of 3 (fewer launches against a bigger
# compile), compiled with the elemental emitter (a block compiles in about a quarter of the fusion
# emitters' memory, 15 vs 56 MiB at 768 wide). Prompts: one block a program (one program for every layer),
# XLA's default emitters (a shorter compile than the elemental emitter at 512 tokens).
ONE_TOKEN_GROUP, ONE_TOKEN_OPTIONS = 3, (("xla_cpu_use_fusion_emitters", False),)
PROMPT_GROUP, PROMPT_OPTIONS = 1, ()


def _embed(
    graphdef: nnx.GraphDef,
    norm: nnx.GraphDef | None,
    dtype: np.dtype,
    params: Any,
    norm_params: Any,
    tokens: Tokens,
) -> Array:
    """``tokens [B, T]`` -> the first block's input ``[B, T, C]`` in the compute ``dtype``, after the first
    block's own ``ln0`` where it has one (``norm``; see :func:`_split_first_norm`)."""
    x = nnx.merge(graphdef, params)(tokens).astype(dtype)
    return x if norm is None else nnx.merge(norm, norm_params)(x)


def _blocks(
    call_block: Callable,
    graphdefs: tuple[nnx.GraphDef, ...],
    params: tuple[Any, ...],
    carry: Any,
    states: tuple[Any, ...],
) -> tuple[Any, tuple[Any, ...]]:
    """Consecutive blocks on ``carry`` (``x [B, T, C]``, or a tuple whose first item is ``x``: the model's
    ``call_block``), each from its layer state: ``(carry, their new states)``."""
    new_states = []
    for graphdef, block_params, layer_state in zip(graphdefs, params, states, strict=True):
        carry, layer_state = call_block(nnx.merge(graphdef, block_params), carry, layer_state)
        new_states.append(layer_state)
    return carry, tuple(new_states)


def _head(
    norm: nnx.GraphDef, head: nnx.GraphDef, last_only: bool, norm_params: Any, head_params: Any, x: Array
) -> Array:
    """``x [B, T, C]`` -> float32 logits ``[B, T, V]`` (``ln_out``, then the head), or ``[B, 1, V]`` of the
    last position alone when ``last_only``."""
    if last_only:
        x = x[:, -1:]
    return nnx.merge(head, head_params)(nnx.merge(norm, norm_params)(x)).astype(jnp.float32)


@functools.lru_cache(maxsize=64)
def _program(fn: Callable, options: tuple[tuple[str, Any], ...], *static: Any) -> Callable:
    """``jax.jit`` of ``fn`` with its leading arguments ``static`` bound (graph definitions, dtypes) and the
    XLA ``options``, one per distinct binding: groups of blocks with the same structures share one
    compiled program."""
    return jax.jit(functools.partial(fn, *static), compiler_options=dict(options))


def _split_first_norm(block: nnx.Module) -> tuple[nnx.GraphDef | None, nnx.GraphDef]:
    """``(ln0, rest)``: the graph definitions of a block's ``ln0`` (None where it has none) and of the block
    without it. RWKV-4/5/6's block 0 applies ``ln0`` to its input before anything else; without it, it is
    the same structure as the blocks after it, so that every layer shares their program (the embedding's
    program applies ``ln0``)."""
    norm = getattr(block, "ln0", None)
    if norm is None:
        return None, nnx.graphdef(block)
    rest = nnx.merge(*nnx.split(block))  # a copy: the model's own block keeps its ln0
    rest.ln0 = nnx.static(None)  # as the later blocks hold it: their graph definition
    return nnx.graphdef(norm), nnx.graphdef(rest)


def _without_first_norm(params: dict) -> dict:
    """A block's parameters (nested dicts) without those of its ``ln0``, in the layout of the later blocks'
    parameters."""
    return {name: value for name, value in params.items() if name != "ln0"}


class LayerwiseStep:
    """``step(layers, tokens [B, T], state, last_only=False) -> (logits, state)`` for one model structure,
    where ``layers`` is the per-layer parameter pytree (``layers["blocks"][i]``, ``layers["emb"]``, ...);
    logits ``[B, T, V]``, or ``[B, 1, V]`` with ``last_only`` (the head on the last position alone).

    Attributes:
      embed: the embedding's program (with block 0's ``ln0``, where it has one).
      heads: the head's programs, keyed by ``last_only``.
      firsts: the first layer of each group of blocks.
      blocks: each group's program (``group`` blocks, the last group what is left).
    """

    def __init__(self, model: nnx.Module, group: int, options: tuple[tuple[str, Any], ...] = ()):
        """``model``: the (abstract) model the step's parameters merge into, in the compute dtype;
        ``group``: consecutive blocks a program; ``options``: XLA's per-program options."""
        self.first_norm, first = _split_first_norm(model.blocks[0])
        graphdefs = [first, *(nnx.graphdef(block) for block in model.blocks[1:])]
        self.group = group
        self.firsts = tuple(range(0, len(graphdefs), group))
        call_block = type(model).call_block
        self.blocks = tuple(
            _program(_blocks, options, call_block, tuple(graphdefs[i : i + group])) for i in self.firsts
        )
        dtype = np.dtype(model.config.dtype)
        self.embed = _program(_embed, options, nnx.graphdef(model.emb), self.first_norm, dtype)
        norm, head = nnx.graphdef(model.ln_out), nnx.graphdef(model.head)
        self.heads = {
            last_only: _program(_head, options, norm, head, last_only) for last_only in (False, True)
        }

    def __call__(
        self, layers: Any, tokens: Tokens, state: tuple[Any, ...], last_only: bool = False
    ) -> tuple[Array, tuple[Any, ...]]:
        blocks = [layers["blocks"][i] for i in range(len(state))]
        norm_params = None
        if self.first_norm is not None:
            norm_params, blocks[0] = blocks[0]["ln0"], _without_first_norm(blocks[0])
        carry = self.embed(layers["emb"], norm_params, tokens)
        new_state: tuple[Any, ...] = ()
        for first, program in zip(self.firsts, self.blocks, strict=True):
            group = range(first, min(first + self.group, len(state)))
            carry, states = program(tuple(blocks[i] for i in group), carry, state[first : group.stop])
            new_state += states
        x = carry[0] if isinstance(carry, tuple) else carry
        head = self.heads[last_only and np.shape(tokens)[1] > 1]  # one position: the same program either way
        return head(layers["ln_out"], layers["head"], x), new_state


def runs_layerwise(model: nnx.Module) -> bool:
    """Whether ``model``'s step can run as :class:`LayerwiseStep`: on the CPU backend, a
    :class:`~rwkv_jax.models.language_model.LanguageModel` whose forward is the base class's own, whose
    ``run_blocks`` is the base class's or comes with its own ``call_block`` (the fold of which it is), and
    whose blocks are stored one per layer."""
    from rwkv_jax.models.language_model import LanguageModel  # the models import rwkv_jax.decoding
    from rwkv_jax.models.layer_stack import StackedBlocks

    cls = type(model)
    blocks_fold = cls.run_blocks is LanguageModel.run_blocks or cls.call_block is not LanguageModel.call_block
    return (
        jax.default_backend() == "cpu"
        and isinstance(model, LanguageModel)
        and cls.forward is LanguageModel.forward
        and blocks_fold
        and not any(isinstance(block, StackedBlocks) for block in model.blocks)
    )
