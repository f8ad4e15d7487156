"""The part every RWKV version shares: ``emb -> blocks -> ln_out -> head`` with a per-layer recurrent state.

A version subclasses :class:`LanguageModel`, sets ``config``, ``emb``, ``blocks``, ``ln_out`` and ``head`` in
its ``__init__``, and defines :meth:`LanguageModel.empty_layer_state`. Each block is called as
``block(x [B, T, C], layer_state) -> (x, layer_state)`` by :meth:`LanguageModel.run_blocks`, and as
``block(x, layer_state, starts)`` when the call packs documents (``starts [B, T]`` bool; a block passes it to
its token shifts and WKV call, see :func:`rwkv_jax.models.common.token_shift`).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.array_typing import Array, Tokens
from rwkv_jax.decoding import compiled_call
from rwkv_jax.models.block_remat import rematerialised
from rwkv_jax.models.common import check_token_ids
from rwkv_jax.models.layer_scan import run_layers
from rwkv_jax.sharding import keep_batch_sharded
from rwkv_jax.wkv.forms import check_starts

_STATE_SHAPES: dict[tuple, Any] = {}  # (model class, config, batch size) -> the empty layer state's shapes


def _checked_starts(starts: Array | None, tokens_shape: tuple[int, ...]) -> Array | None:
    """``starts`` as a bool array, checked against the tokens' ``[B, T]``; None stays None."""
    if starts is None:
        return None
    starts = jnp.asarray(starts)
    check_starts(starts, *tokens_shape)
    return starts


class LanguageModel(nnx.Module):
    """One call for prefill, decode and training: ``(tokens [B, T], state) -> (logits [B, T, V], state)``.

    ``eager = True`` on a model (or on the class) makes every call run op by op, for debugging.
    """

    eager = False
    # True: run_blocks scans the runs of same-structured blocks (rwkv_jax.models.layer_scan), so compile
    # time does not grow with depth; False: a Python loop (one copy of the block per layer in the program).
    scan_layers = True
    # True: each block call is rematerialised (rwkv_jax.models.block_remat): the backward pass keeps only the
    # blocks' inputs and recomputes their insides (training at long context: config.train.remat_blocks).
    remat_blocks = False
    # True: on CPU the one-token step runs layer by layer (rwkv_jax.layerwise: a compile flat in depth and a
    # fraction of the memory, each program a launch); False: one program holding every layer, which decodes
    # faster at small widths (docs/speed.md). Prompts run layer by layer either way.
    layerwise_decoding = True

    def empty_layer_state(self, batch_size: int) -> Any:
        """The state of one block before any token (a NamedTuple of float32 arrays, batch on axis 0)."""
        raise NotImplementedError(f"{type(self).__name__} must define empty_layer_state")

    def init_state(self, batch_size: int) -> tuple[Any, ...]:
        """The state before any token for ``batch_size`` sequences: one layer state per block; the empty
        state, or the tuned one of a model given ``model.tuned_state`` (:mod:`rwkv_jax.finetune.state`)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        empty = (self.empty_layer_state(int(batch_size)),) * self.config.n_layer
        tuned = getattr(self, "tuned_state", None)
        return empty if tuned is None else tuned.initial(empty)

    def __call__(
        self,
        tokens: Tokens,
        state: tuple[Any, ...] | None = None,
        *,
        last_only: bool = False,
        starts: Array | None = None,
    ) -> tuple[Array, tuple[Any, ...]]:
        """tokens ``[B, T]`` int -> logits ``[B, T, V]`` float32 and the state after the last token.

        ``state=None`` starts from :meth:`init_state`. ``last_only``: logits ``[B, 1, V]`` of the last
        position only (the head runs on it alone: a prefill that needs the next-token prediction).
        ``starts [B, T]`` bool (or None): documents packed into one row start at these tokens; before each,
        every layer's WKV state and token shifts return to ``state`` (no cross-talk between the documents;
        the WKV forms that take it: ``rwkv_jax.wkv``'s ``takes_starts``). Ids
        outside ``[0, V)`` raise ValueError when ``tokens`` is concrete; under ``jit`` they cannot be checked
        and give NaN logits at their positions.

        Called with concrete parameters, the call runs a jitted step compiled once per input shape and dtype
        (:mod:`rwkv_jax.decoding`; on CPU a bfloat16 / float16 model computes in float32 there); inside a
        transform (traced parameters) it runs op by op as part of the enclosing program. :meth:`forward` is
        the op-by-op call, for debugging.
        """
        check_token_ids(tokens, self.config.vocab_size)  # on the host array, before any transfer
        state = self._checked_state(state, np.shape(tokens)[0])
        starts = _checked_starts(starts, np.shape(tokens))
        result = None if self.eager else compiled_call(self, jnp.asarray(tokens), state, last_only, starts)
        return self.forward(tokens, state, last_only=last_only, starts=starts) if result is None else result

    def forward(
        self,
        tokens: Tokens,
        state: tuple[Any, ...] | None = None,
        *,
        last_only: bool = False,
        starts: Array | None = None,
    ) -> tuple[Array, tuple[Any, ...]]:
        """The same as calling the model, op by op (no jit of its own, no token-id range check)."""
        tokens = jnp.asarray(tokens)
        state = self._checked_state(state, tokens.shape[0])
        starts = _checked_starts(starts, tokens.shape)
        x = keep_batch_sharded(self.emb(tokens).astype(self.config.dtype))
        x, new_state = self.run_blocks(x, state) if starts is None else self.run_blocks(x, state, starts)
        if last_only:
            x = x[:, -1:]
        logits = keep_batch_sharded(self.head(self.ln_out(x)).astype(jnp.float32))
        return logits, new_state

    def run_blocks(
        self, x: Array, state: tuple[Any, ...], starts: Array | None = None
    ) -> tuple[Array, tuple[Any, ...]]:
        """``x [B, T, C]`` through the blocks in order, each with its layer state (and the document starts
        ``[B, T]`` or None); returns x and the new state. A version whose blocks pass more than ``x`` from
        one to the next (RWKV-7) overrides this. Runs as a scan over layers where ``scan_layers`` and the
        blocks share one structure, falling back to one call per block where they differ
        (:func:`rwkv_jax.models.layer_scan.run_layers`)."""

        def step(block: nnx.Module, x: Array, layer_state: Any) -> tuple[Array, Any]:
            # A family whose blocks take no document starts keeps working without them.
            x, layer_state = block(x, layer_state) if starts is None else block(x, layer_state, starts)
            return keep_batch_sharded(x), layer_state

        step = rematerialised(step) if self.remat_blocks else step
        return run_layers(
            list(self.blocks), x, state, step, scan=self.scan_layers, keep_products=not self.remat_blocks
        )

    @staticmethod
    def call_block(block: nnx.Module, carry: Any, layer_state: Any) -> tuple[Any, Any]:
        """One block on what passes between blocks, ``carry``: here ``x [B, T, C]`` (the first block gets the
        embedding's output); a family whose blocks pass more (RWKV-7) overrides this with a tuple whose
        first item is ``x``. Returns the next carry and the layer's new state. The layer-by-layer step
        (:mod:`rwkv_jax.layerwise`) folds it over the blocks: a family that overrides :meth:`run_blocks`
        runs layer by layer only if it also overrides this, declaring that the fold is its
        ``run_blocks``."""
        return block(carry, layer_state)

    def _layer_state_shapes(self, batch_size: int) -> Any:
        """``jax.eval_shape`` of :meth:`empty_layer_state`, remembered per config and batch size (a call
        checks every state it is given; tracing the empty state each time would cost ~1 ms)."""
        key = (type(self), self.config, batch_size)
        if key not in _STATE_SHAPES:
            _STATE_SHAPES[key] = jax.eval_shape(lambda: self.empty_layer_state(batch_size))
        return _STATE_SHAPES[key]

    def _checked_state(self, state: tuple[Any, ...] | None, batch_size: int) -> tuple[Any, ...]:
        """``state``, each layer rebuilt in the model's state type (a restored state may hold plain lists).

        Raises ValueError naming the first layer and field whose shape differs from the empty state's.
        """
        if state is None:
            return self.init_state(batch_size)
        if len(state) != self.config.n_layer:
            raise ValueError(f"state has {len(state)} layers, the model has {self.config.n_layer}")
        expected = self._layer_state_shapes(batch_size)
        fields, treedef = jax.tree_util.tree_flatten_with_path(expected)
        checked = []
        for i, layer_state in enumerate(state):
            leaves = jax.tree.leaves(layer_state)
            if len(leaves) != len(fields):
                raise ValueError(f"state[{i}] has {len(leaves)} arrays, expected {len(fields)}")
            for (path, want), leaf in zip(fields, leaves, strict=True):
                if leaf.shape != want.shape:
                    name = jax.tree_util.keystr(path, simple=True, separator=".")
                    raise ValueError(f"state[{i}].{name} has shape {leaf.shape}, expected {want.shape}")
            checked.append(jax.tree.unflatten(treedef, leaves))
        return tuple(checked)
