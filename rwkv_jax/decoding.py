"""Jitted inference: a model as a pure step function, and the compiled call behind ``model(tokens, state)``.

``rwkv_jax.decoder(model)`` returns a :class:`Decoder`: ``step(params, tokens [B, T], state, last_only=False)
-> (logits, state)`` is a jitted pure function (usable in your own ``jit``, ``scan`` or ``vmap``), ``params``
the arrays it reads. Calling a model (``model(tokens, state)``) goes through the same compiled step, cached
per model: the parameters are read from the model's variables at every call (so an assignment
``model.head.kernel[...] = w`` or an optimizer update shows in the next call), a replaced sub-module or
variable rebuilds the entry, and ``jax.jit`` keeps one program per shape and dtype of the inputs.

Compute dtype on CPU: XLA:CPU has no fast bfloat16 / float16 matrix product (it converts the whole weight
to float32 in a fresh buffer at every call, docs/speed.md), so on the CPU backend the step computes in
float32 from a float32 working copy of the weights, converted once per weight version; the embedding stays
as stored (a step reads only its tokens' rows, which XLA converts alone). Elsewhere it computes in the
model's own ``dtype`` on the stored weights.
"""

import dataclasses
import functools
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.array_typing import Array, Tokens

LOW_PRECISION = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))
# Top-level parameters a step reads by row (the token embedding): no float32 working copy of them, which
# would double their memory for one row a token.
READ_BY_ROW = frozenset({"emb"})


def apply(
    graphdef: nnx.GraphDef,
    params: Any,
    tokens: Tokens,
    state: Any,
    last_only: bool = False,
    starts: Array | None = None,
) -> tuple[Array, Any]:
    """The model ``nnx.merge(graphdef, params)`` run op by op on ``tokens [B, T]`` from ``state``.

    Returns logits ``[B, T, V]`` (``[B, 1, V]``: the last position only, when ``last_only``) and the state.
    ``starts [B, T]`` bool: packed documents' first tokens (see ``LanguageModel.__call__``), or None.
    With one token (``T == 1``) the blocks run as a loop, not a scan (``LanguageModel.scan_layers``).
    """
    model = nnx.merge(graphdef, params)
    if np.shape(tokens)[1] == 1 and getattr(model, "scan_layers", False):
        # One token: the blocks as a Python loop. A scan over per-layer parameters stacks them inside the
        # call, a temporary second copy of the block weights at every step (docs/speed.md); the one-token
        # program is small, so a copy of it per layer costs little compile time.
        model.scan_layers = False
    forward = getattr(model, "forward", None)
    if starts is not None:
        return forward(tokens, state, last_only=last_only, starts=starts)
    if forward is not None:
        return forward(tokens, state, last_only=last_only)
    logits, state = model(tokens, state)  # any model with the rwkv_jax contract (generate's test models)
    return (logits[:, -1:] if last_only else logits), state


@functools.lru_cache(maxsize=32)
def compiled_step(graphdef: nnx.GraphDef) -> Callable:
    """``jax.jit`` of :func:`apply` for one model structure (``last_only`` static), built once per graphdef
    so that a call does not hash the graph definition again."""
    return jax.jit(functools.partial(apply, graphdef), static_argnames=("last_only",))


@dataclasses.dataclass(frozen=True)
class Decoder:
    """A model as a pure jitted function of its parameters.

    Attributes:
      step: ``step(params, tokens [B, T] int, state, last_only=False) -> (logits, state)``; logits ``[B, T,
        V]`` float32, or ``[B, 1, V]`` with ``last_only`` (the head applied to the last position only: a
        prefill that needs only the next-token prediction). Token ids are not range-checked here (an id
        outside the vocabulary gives NaN logits): the model call checks them.
      params: the parameter pytree ``step`` takes (on CPU float32 working copies of bf16/f16 weights but
        the embedding).
      graphdef: the module structure ``step`` merges ``params`` into.
      init_state: ``init_state(batch_size)``, the model's empty state.
    """

    step: Callable
    params: Any
    graphdef: nnx.GraphDef
    init_state: Callable[[int], Any]


def compute_dtype(model: nnx.Module) -> np.dtype | None:
    """The dtype the jitted step computes in: float32 on the CPU backend when the model's ``dtype`` is
    bfloat16 / float16 (or its weights are), else None (the model's own)."""
    dtype = getattr(getattr(model, "config", None), "dtype", None)
    if dtype is None or jax.default_backend() != "cpu":
        return None
    stored = {np.dtype(leaf.dtype) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))}
    if np.dtype(dtype) in LOW_PRECISION or stored & set(LOW_PRECISION):
        return np.dtype(jnp.float32)
    return None


def working_copy(path: tuple, value: Array, dtype: np.dtype | None) -> Array:
    """``value`` (the parameter at ``path``, e.g. ``("blocks", 0, "att", "key", "kernel")``) as the step
    reads it: a bf16/f16 array converted to ``dtype`` (when given) unless it is read by row, else itself."""
    if dtype is None or np.dtype(value.dtype) not in LOW_PRECISION or path[0] in READ_BY_ROW:
        return value
    return value.astype(dtype)


def _structure(model: nnx.Module, dtype: np.dtype | None) -> nnx.GraphDef:
    """The graphdef the step merges into: the model's own, or its twin computing in ``dtype``."""
    if dtype is not None and np.dtype(model.config.dtype) != dtype:
        from rwkv_jax.models.common import with_config  # the models import this module

        model = with_config(model, dtype=dtype)
    return nnx.split(model)[0]


def decoder(model: nnx.Module) -> Decoder:
    """The jitted pure step of ``model`` and the parameters it reads (a snapshot: rebuild it, or call the
    model itself, after changing weights). See the module docstring for the compute dtype."""
    dtype = compute_dtype(model)
    _, params = nnx.split(model)
    params = jax.tree_util.tree_map_with_path(
        lambda keys, value: working_copy(tuple(_key(k) for k in keys), value, dtype), params
    )
    graphdef = _structure(model, dtype)
    return Decoder(compiled_step(graphdef), params, graphdef, model.init_state)


def _key(entry: Any) -> Any:
    """A pytree key path entry (``DictKey``, ``GetAttrKey``, ...) as the plain key it stands for."""
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return getattr(entry, attribute)
    return entry


class _Entry:
    """One model's compiled call: its live variables (read at every call), the edges that locate them
    (checked at every call, so that a replaced module or variable is noticed) and the working copies."""

    def __init__(self, model: nnx.Module, variables: nnx.State):
        self.dtype = compute_dtype(model)
        flat = list(nnx.to_flat_state(variables))
        self.paths = [path for path, _ in flat]
        self.variables = [variable for _, variable in flat]
        self.treedef = jax.tree.structure(variables)
        self.step = compiled_step(_structure(model, self.dtype))
        self.edges = _edges(model, self.paths)
        self.values: list[Array] = []
        self.copies: list[Array] = []

    def is_current(self, model: nnx.Module) -> bool:
        """Whether every module and variable on the paths is still the one this entry was built from."""
        nodes = [model]  # the entry holds no reference to the model (the cache's weak key)
        for parent, key, child in self.edges:
            node = _child(nodes[parent], key)
            if node is not child:
                return False
            nodes.append(node)
        return True

    def read(self) -> list[Array]:
        """The current value of every variable (``get_raw_value``: ``get_value`` costs ~8x more per call)."""
        return [variable.get_raw_value() for variable in self.variables]

    def params(self, values: list[Array]) -> Any:
        """The parameter pytree of ``values``, bf16/f16 ones converted once per new value."""
        if len(self.values) != len(values):
            self.values, self.copies = [None] * len(values), [None] * len(values)
        for i, value in enumerate(values):
            if value is not self.values[i]:
                self.values[i], self.copies[i] = value, working_copy(self.paths[i], value, self.dtype)
        return jax.tree.unflatten(self.treedef, self.copies)


def _child(parent: Any, key: Any) -> Any:
    try:
        return parent[key] if isinstance(key, int) else getattr(parent, key)
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def _edges(model: nnx.Module, paths: list[tuple]) -> list[tuple[int, Any, Any]]:
    """``(parent index, key, child)`` for every step of every variable path, each edge once; the parent
    index counts the model as 0 and each listed child as the next one (the order of the list)."""
    edges, index = [], {(): 0}
    for path in paths:
        node = model
        for depth, key in enumerate(path):
            node = _child(node, key)
            if path[: depth + 1] not in index:
                index[path[: depth + 1]] = len(edges) + 1
                edges.append((index[path[:depth]], key, node))
    return edges


_ENTRIES: "weakref.WeakKeyDictionary[nnx.Module, _Entry]" = weakref.WeakKeyDictionary()


def is_traced(*trees: Any) -> bool:
    """Whether any leaf of ``trees`` is a tracer (the call happens inside someone's jit / grad / vmap)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def compiled_call(
    model: nnx.Module, tokens: Tokens, state: Any, last_only: bool, starts: Array | None = None
) -> tuple[Array, Any] | None:
    """``model``'s jitted step on its current parameters; None when a parameter is traced (the caller
    runs op by op instead, inside the enclosing transform)."""
    entry = _ENTRIES.get(model)
    if entry is None or not entry.is_current(model):
        _, variables = nnx.split(model)
        if is_traced(variables):
            return None
        entry = _ENTRIES[model] = _Entry(model, variables)
    values = entry.read()
    if is_traced(values):
        return None
    return entry.step(entry.params(values), tokens, state, last_only=last_only, starts=starts)
