"""The one-token step on CPU as a few small compiled programs (embedding, groups of blocks, head) in turn.

A one-token step compiled whole holds every layer's copy of the block in its program (a Python loop over
layers; a scan over the stored stacks would copy a layer's weights per step, docs/speed.md), and compiling
it takes memory that grows with depth: Finch 12 x 768 compiled ~100 MiB above the weights, the largest
part of the decoding peak after the weights and the imports. Here the step is three kinds of program: the
embedding; ``GROUP`` consecutive blocks (one program per distinct run of block structures: at 12 layers
blocks 0-2, whose block 0 holds RWKV-4/6's ``ln0``, and one program for 3-5, 6-8 and 9-11); ``ln_out`` +
head. The numbers are the same as the whole program's (the same operations per block); a compile holds
``GROUP`` blocks, so the decoding peak grows with the group size (measured sizes: docs/speed.md).

What it costs: every program is a launch, and XLA:CPU cannot start a layer before the program holding the
layer before it has finished; on a quiet 2-core CPU groups of 3 decode somewhat slower than the whole
program (docs/speed.md has the A/B).

The pieces are compiled without XLA:CPU's fusion emitters (``xla_cpu_use_fusion_emitters``; the elemental
emitter instead), a per-program option, not a process-wide flag: a block compiles in about a quarter of the
memory at the same decode speed.

Used for models whose forward is :class:`rwkv_jax.models.language_model.LanguageModel`'s own (``emb ->
blocks -> ln_out -> head``, each block ``block(x, layer_state) -> (x, layer_state)``); a family that passes
more between its blocks (RWKV-7's ``v_first``) keeps the whole program.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.array_typing import Array, Tokens

# Per-program XLA options of the pieces: the elemental emitter compiles a block in a quarter of the fusion
# emitters' memory (15 vs 56 MiB, Finch 768 wide).
COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
GROUP = 3  # consecutive blocks a program: fewer launches against a bigger compile (module docstring)


def _embed(graphdef: nnx.GraphDef, dtype: np.dtype, params: Any, tokens: Tokens) -> Array:
    """``tokens [B, 1]`` -> the first block's input ``[B, 1, C]`` in the compute ``dtype``."""
    return nnx.merge(graphdef, params)(tokens).astype(dtype)


def _blocks(
    graphdefs: tuple[nnx.GraphDef, ...], params: tuple[Any, ...], x: Array, states: tuple[Any, ...]
) -> tuple[Array, tuple[Any, ...]]:
    """Consecutive blocks on ``x [B, 1, C]``, each from its layer state: ``(x, their new states)``."""
    new_states = []
    for graphdef, block_params, layer_state in zip(graphdefs, params, states, strict=True):
        x, layer_state = nnx.merge(graphdef, block_params)(x, layer_state)
        new_states.append(layer_state)
    return x, tuple(new_states)


def _head(norm: nnx.GraphDef, head: nnx.GraphDef, norm_params: Any, head_params: Any, x: Array) -> Array:
    """``x [B, 1, C]`` -> float32 logits ``[B, 1, V]`` (``ln_out``, then the head)."""
    return nnx.merge(head, head_params)(nnx.merge(norm, norm_params)(x)).astype(jnp.float32)


@functools.lru_cache(maxsize=64)
def _program(fn: Callable, *static: Any) -> Callable:
    """``jax.jit`` of ``fn`` with its leading arguments ``static`` bound (graph definitions, dtypes), one per
    distinct binding: groups of blocks with the same structures share one compiled program."""
    return jax.jit(functools.partial(fn, *static), compiler_options=COMPILER_OPTIONS)


class LayerwiseStep:
    """``step(layers, tokens [B, 1], state) -> (logits [B, 1, V], state)`` for one model structure, where
    ``layers`` is the per-layer parameter pytree (``layers["blocks"][i]``, ``layers["emb"]``, ...).

    Attributes:
      embed, head: the embedding's and the head's programs.
      firsts: the first layer of each group of blocks.
      blocks: each group's program (``GROUP`` blocks, the last group what is left).
    """

    def __init__(self, model: nnx.Module, group: int = GROUP):
        """``model``: the (abstract) model the step's parameters merge into, in the compute dtype;
        ``group``: consecutive blocks a program."""
        graphdefs = [nnx.graphdef(block) for block in model.blocks]
        self.group = group
        self.firsts = tuple(range(0, len(graphdefs), group))
        self.blocks = tuple(_program(_blocks, tuple(graphdefs[i : i + group])) for i in self.firsts)
        self.embed = _program(_embed, nnx.graphdef(model.emb), np.dtype(model.config.dtype))
        self.head = _program(_head, nnx.graphdef(model.ln_out), nnx.graphdef(model.head))

    def __call__(self, layers: Any, tokens: Tokens, state: tuple[Any, ...]) -> tuple[Array, tuple[Any, ...]]:
        x = self.embed(layers["emb"], tokens)
        new_state: tuple[Any, ...] = ()
        for first, blocks in zip(self.firsts, self.blocks, strict=True):
            group = range(first, min(first + self.group, len(state)))
            x, states = blocks(tuple(layers["blocks"][i] for i in group), x, state[first : group.stop])
            new_state += states
        return self.head(layers["ln_out"], layers["head"], x), new_state


def runs_layerwise(model: nnx.Module) -> bool:
    """Whether ``model``'s one-token step can run as :class:`LayerwiseStep`: on the CPU backend, a
    :class:`~rwkv_jax.models.language_model.LanguageModel` whose forward and ``run_blocks`` are the base
    class's own and whose blocks are stored one per layer."""
    from rwkv_jax.models.language_model import LanguageModel  # the models import rwkv_jax.decoding
    from rwkv_jax.models.layer_stack import StackedBlocks

    cls = type(model)
    return (
        jax.default_backend() == "cpu"
        and isinstance(model, LanguageModel)
        and cls.forward is LanguageModel.forward
        and cls.run_blocks is LanguageModel.run_blocks
        and not any(isinstance(block, StackedBlocks) for block in model.blocks)
    )
