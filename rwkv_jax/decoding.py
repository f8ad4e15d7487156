"""Jitted inference: a model as a pure step function, and the compiled call behind ``model(tokens, state)``.

``rwkv_jax.decoder(model)`` returns a :class:`Decoder`: ``step(params, tokens [B, T], state, last_only=False)
-> (logits, state)`` is a pure function of jitted programs (usable in your own ``jit``, ``scan`` or
``vmap``), ``params`` the arrays it reads. Calling a model (``model(tokens, state)``) goes through the same
compiled step, cached per model: the parameters are read from the model's variables at every call (so an
assignment ``model.head.kernel[...] = w`` or an optimizer update shows in the next call), a replaced
sub-module or variable rebuilds the entry, and ``jax.jit`` keeps one program per shape and dtype of the
inputs.

Compute dtype on CPU: XLA:CPU has no fast bfloat16 / float16 matrix product (it converts the whole weight
to float32 in a fresh buffer at every call, docs/speed.md), so on the CPU backend the step computes in
float32: the 16-bit matrices of its products (linear layers' kernels, LoRAs) are read as stored by
:mod:`rwkv_jax.lowp_matmul`'s kernel (where it builds; else they get a float32 working copy too), the
embedding as stored (a step reads only its tokens' rows, which XLA converts alone), and every other 16-bit
parameter through a float32 working copy, converted once per weight version. Elsewhere it computes in the
model's own ``dtype`` on the stored weights.

Layer layouts (CPU): the step reads the blocks in two layouts that share their memory: each run of equal
blocks stacked (:mod:`rwkv_jax.models.layer_stack`, stacked once per weight version, not inside every
call), and per-layer arrays that are zero-copy views of those stacks (the model's own variables are rebound
to the views, the same values bit for bit). Calls run as a few small programs called in turn over the
per-layer views (:mod:`rwkv_jax.layerwise`: embedding, blocks, head), because XLA:CPU copies the slice of a
stacked weight that a scan step reads into a fresh buffer (one layer's weights per step: decoding ~2x
slower, a prefill ~4 % slower; docs/speed.md), and one program holding every layer compiles in memory and
time that grow with depth. The whole program serves calls with document ``starts``, ``step.lower``, the
one-token calls of a model whose ``layerwise_decoding`` is False (RWKV-7) or whose 16-bit kernels are read
as stored (:func:`reads_stored_16bit_kernels`), and a model whose blocks the layer-by-layer step cannot
call: it scans the stacks for ``T > 1`` and loops over the views for one token.
Other backends, and models that do not scan their layers, keep the per-layer layout only and one program
(prefill stacks inside the call).
"""

import ctypes
import dataclasses
import functools
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.errors import TraceContextError

from rwkv_jax import layerwise, lowp_matmul
from rwkv_jax.array_typing import Array, Tokens
from rwkv_jax.host_memory import aligned_empty, shares_memory
from rwkv_jax.layerwise import LayerwiseStep, runs_layerwise
from rwkv_jax.models.layer_stack import StackedBlocks, equal_structure_runs, layer_paths, stack_layers

LOW_PRECISION = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))
# Top-level parameters a step reads by row (the token embedding): no float32 working copy of them, which
# would double their memory for one row a token.
READ_BY_ROW = frozenset({"emb"})


class Structure(NamedTuple):
    """The module structures a step merges its :class:`Params` into.

    Attributes:
      layers: the graphdef with one block per layer (the model's own layout).
      stacked: the graphdef with each run of equal blocks one :class:`~rwkv_jax.models.layer_stack.
        StackedBlocks`, or None where the parameters are not stored stacked.
    """

    layers: nnx.GraphDef
    stacked: nnx.GraphDef | None = None


class Params(NamedTuple):
    """The arrays a step reads, in the layouts of :class:`Structure` (on CPU the per-layer arrays of a
    stacked run are views of the stack: one copy of the weights in memory).

    Attributes:
      layers: the parameters one block per layer (``layers["blocks"][i]["att"]["key"]["kernel"]``), nested
        plain dicts of arrays (:func:`nested`), what the layer-by-layer programs and the whole program's
        one-token step read.
      stacked: the same parameters stacked per run (``stacked["blocks"][k]["layers"]``), what the whole
        program's prefill reads; None where not stored stacked.
    """

    layers: Any
    stacked: Any = None


def apply(
    structure: Structure,
    params: Params,
    tokens: Tokens,
    state: Any,
    last_only: bool = False,
    starts: Array | None = None,
) -> tuple[Array, Any]:
    """The model merged from ``params`` run op by op on ``tokens [B, T]`` from ``state``.

    Returns logits ``[B, T, V]`` (``[B, 1, V]``: the last position only, when ``last_only``) and the state.
    ``starts [B, T]`` bool: packed documents' first tokens (see ``LanguageModel.__call__``), or None.
    With one token (``T == 1``) the blocks run as a Python loop over the per-layer parameters; with more,
    the stored stacks are scanned (the per-layer parameters where none are stored: stacked in the call).
    """
    one_token = np.shape(tokens)[1] == 1
    if one_token or params.stacked is None:
        model = nnx.merge(structure.layers, params.layers)
    else:
        model = nnx.merge(structure.stacked, params.stacked)
    if one_token and getattr(model, "scan_layers", False):
        # One token: the blocks as a Python loop. XLA:CPU copies the slice of a stacked weight that a scan
        # step reads into a fresh buffer (one layer's weights per layer, decoding ~2x slower), and a scan
        # over per-layer parameters stacks them all in the call (docs/speed.md).
        model.scan_layers = False
    forward = getattr(model, "forward", None)
    if starts is not None:
        return forward(tokens, state, last_only=last_only, starts=starts)
    if forward is not None:
        return forward(tokens, state, last_only=last_only)
    logits, state = model(tokens, state)  # any model with the rwkv_jax contract (generate's test models)
    return (logits[:, -1:] if last_only else logits), state


@functools.lru_cache(maxsize=32)
def compiled_step(structure: Structure) -> Callable:
    """``jax.jit`` of :func:`apply` for one model structure (``last_only`` static), built once per structure
    so that a call does not hash the graph definitions again."""
    return jax.jit(functools.partial(apply, structure), static_argnames=("last_only",))


class Step:
    """``step(params, tokens [B, T], state, last_only=False, starts=None) -> (logits, state)``: the whole
    jitted program (:func:`compiled_step`), except for a model that runs layer by layer
    (:mod:`rwkv_jax.layerwise`: a few small programs called in turn, the same numbers), which runs so
    unless given ``starts``. Usable inside your own ``jit`` / ``scan`` / ``vmap`` either way; ``lower``
    lowers the whole program.

    Attributes:
      whole: the whole program.
      one_token, prompt: the layer-by-layer steps for one token and for more (None: the whole program).
    """

    def __init__(
        self, whole: Callable, one_token: LayerwiseStep | None = None, prompt: LayerwiseStep | None = None
    ):
        self.whole, self.one_token, self.prompt = whole, one_token, prompt
        self.lower = whole.lower

    def __call__(self, params: Params, tokens: Tokens, state: Any, **options: Any) -> tuple[Array, Any]:
        """``options``: ``last_only`` and ``starts``, as :func:`apply` takes them."""
        one_token = np.shape(tokens)[1] == 1
        pieces = self.one_token if one_token else self.prompt
        if pieces is not None and options.get("starts") is None:
            return pieces(params.layers, tokens, state, last_only=options.get("last_only", False))
        if one_token:  # one token reads the per-layer layout alone: the stacks need not be passed
            params = params._replace(stacked=None)
        return self.whole(params, tokens, state, **options)


@dataclasses.dataclass(frozen=True)
class Decoder:
    """A model as a pure jitted function of its parameters.

    Attributes:
      step: ``step(params, tokens [B, T] int, state, last_only=False) -> (logits, state)`` (a
        :class:`Step`); logits ``[B, T, V]`` float32, or ``[B, 1, V]`` with ``last_only`` (the head applied to
        the last position only: a prefill that needs only the next-token prediction). Token ids are not
        range-checked here (an id outside the vocabulary gives NaN logits): the model call checks them.
      params: the :class:`Params` ``step`` takes (on CPU float32 working copies of the bf16/f16 weights
        that are neither the embedding nor, where :mod:`rwkv_jax.lowp_matmul` builds, matrices of a
        product: :func:`is_product_matrix`).
      graphdef: the :class:`Structure` ``step`` merges ``params`` into.
      init_state: ``init_state(batch_size)``, the model's empty state.
    """

    step: Step
    params: Params
    graphdef: Structure
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


def working_copy(path: tuple, variable: nnx.Variable, dtype: np.dtype | None) -> Array:
    """The value of ``variable`` (the parameter at ``path``, e.g. ``("blocks", 0, "att", "key",
    "kernel")``) as the step reads it: a bf16/f16 array converted to ``dtype`` (when given), else itself.
    Not converted: what is read by row, and what :func:`is_read_as_stored`."""
    value = variable.get_raw_value()
    if dtype is None or np.dtype(value.dtype) not in LOW_PRECISION or path[0] in READ_BY_ROW:
        return value
    return value if is_read_as_stored(path, variable) else value.astype(dtype)


def is_product_matrix(path: tuple, variable: nnx.Variable) -> bool:
    """Whether the parameter at ``path`` is a matrix the models multiply by through
    :func:`rwkv_jax.models.common.matmul`: a linear layer's kernel, or a LoRA matrix (a parameter with a
    ``lora`` logical axis)."""
    return path[-1] == "kernel" or "lora" in (variable.get_metadata().get("logical_axes") or ())


def is_read_as_stored(path: tuple, variable: nnx.Variable) -> bool:
    """Whether the step reads the parameter at ``path`` as stored, with no float32 copy: a product's matrix
    (:func:`is_product_matrix`) of a bf16/f16 dtype that :mod:`rwkv_jax.lowp_matmul` multiplies here."""
    dtype = np.dtype(variable.get_raw_value().dtype)
    return is_product_matrix(path, variable) and dtype in LOW_PRECISION and lowp_matmul.available(dtype)


def reads_stored_16bit_kernels(model: nnx.Module) -> bool:
    """Whether ``model`` has matrices the step reads as stored (:func:`is_read_as_stored`).
    Such a model decodes one token with the whole program, not layer by layer: it was 13 % faster (Finch
    12 x 768: 46.3 against 40.8 tokens/s, docs/speed.md), and the layer-by-layer step's reason, the whole
    program's ~100 MiB of compile memory, weighs less beside half the weights."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return any(is_read_as_stored(path, variable) for path, variable in flat)


def stores_stacked(model: nnx.Module) -> bool:
    """Whether the step reads ``model``'s blocks stacked: on the CPU backend (where a layer of a stack can be
    a zero-copy view), a model that scans its layers, blocks one per layer with a run of two or more equal
    ones."""
    blocks = getattr(model, "blocks", None)
    if jax.default_backend() != "cpu" or not getattr(model, "scan_layers", False) or blocks is None:
        return False
    if any(isinstance(block, StackedBlocks) for block in blocks):
        return False
    return any(b - a > 1 for a, b in equal_structure_runs(list(blocks)))


def _structure(model: nnx.Module, dtype: np.dtype | None, stacked: bool) -> tuple[Structure, Any, Step]:
    """The structure the step merges into (the model's own, or its twin computing in ``dtype``), with
    ``stacked`` the abstract state (shapes) of the stacked layout (else None), and the step."""
    if dtype is not None and np.dtype(model.config.dtype) != dtype:
        from rwkv_jax.models.common import with_config  # the models import this module

        model = with_config(model, dtype=dtype)
    graphdef, state = nnx.split(model)
    if not stacked:
        return Structure(graphdef), None, Step(compiled_step(Structure(graphdef)))
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    abstract = nnx.merge(graphdef, shapes)
    stacked_graphdef, stacked_state = nnx.split(stack_layers(abstract))
    structure = Structure(graphdef, stacked_graphdef)
    if not runs_layerwise(abstract):
        return structure, stacked_state, Step(compiled_step(structure))
    one_token = None
    if abstract.layerwise_decoding and not reads_stored_16bit_kernels(abstract):
        one_token = LayerwiseStep(abstract, layerwise.ONE_TOKEN_GROUP, layerwise.ONE_TOKEN_OPTIONS)
    prompt = LayerwiseStep(abstract, layerwise.PROMPT_GROUP, layerwise.PROMPT_OPTIONS)
    return structure, stacked_state, Step(compiled_step(structure), one_token, prompt)


def decoder(model: nnx.Module) -> Decoder:
    """The jitted pure step of ``model`` and the parameters it reads (a snapshot: call ``decoder`` again, or
    call the model itself, after changing weights). See the module docstring for the compute dtype and
    the layouts; on CPU this rebinds the model's block variables to views of the stacks (same values)."""
    entry = _entry(model)
    params = None if entry is None else entry.params()
    if params is None:
        raise ValueError("decoder(model) needs concrete parameters (it was called inside a transform)")
    return Decoder(entry.step, params, entry.structure, model.init_state)


class _Entry:
    """One model's compiled call: its live variables (read at every call), the edges that locate them
    (checked at every call, so that a replaced module or variable is noticed) and the working copies, per
    layer and, where the blocks are stored stacked, per stacked variable (``sources``: the per-layer
    variables each holds)."""

    def __init__(self, model: nnx.Module, variables: nnx.State):
        self.dtype = compute_dtype(model)
        flat = list(nnx.to_flat_state(variables))
        self.paths = [path for path, _ in flat]
        self.variables = [variable for _, variable in flat]
        self.structure, stacked, self.step = _structure(model, self.dtype, stores_stacked(model))
        self.edges = _edges(model, self.paths)
        self.sources: list[list[int]] = []
        self.stacked_paths: list[tuple] = []
        if stacked is not None:
            index = {path: i for i, path in enumerate(self.paths)}
            runs = equal_structure_runs(list(model.blocks))
            self.stacked_paths = [path for path, _ in nnx.to_flat_state(stacked)]
            self.sources = [[index[p] for p in layer_paths(path, runs)] for path in self.stacked_paths]
        self.owner = {i: k for k, sources in enumerate(self.sources) for i in sources}
        self.values: list[Array] = [None] * len(self.paths)
        self.copies: list[Array] = [None] * len(self.paths)
        self.stacks: list[Array] = [None] * len(self.sources)
        self.last: Params | None = None  # the Params of the current values (rebuilt when one changes)

    def is_current(self, model: nnx.Module) -> bool:
        """Whether every module and variable on the paths is still the one this entry was built from."""
        nodes = [model]  # the entry holds no reference to the model (the cache's weak key)
        for parent, key, child in self.edges:
            node = _child(nodes[parent], key)
            if node is not child:
                return False
            nodes.append(node)
        return True

    def params(self) -> Params | None:
        """The parameters of the variables' current values (``get_raw_value``: ``get_value`` costs ~8x more
        per call): bf16/f16 ones converted, and the stacks rebuilt, once per new value; None when a value
        is traced. The same Params object while no value changes (a call does not rebuild it). Holds no
        list of the values, so that an old array is freed as soon as its stack replaces it (loading peaks
        at the weights plus one stacked variable)."""
        changed = [i for i, v in enumerate(self.variables) if v.get_raw_value() is not self.values[i]]
        if not changed and self.last is not None:
            return self.last
        if is_traced([self.variables[i].get_raw_value() for i in changed]):
            return None
        self.last = None  # its old arrays go as their replacements come (restacking holds one layer more)
        # Called inside someone's jit (a model closed over by a traced function), the copies and stacks
        # must still be concrete arrays: they are cached here and outlive that trace.
        with jax.ensure_compile_time_eval():
            for i in changed:
                value = self.variables[i].get_raw_value()
                self.values[i] = value
                self.copies[i] = working_copy(self.paths[i], self.variables[i], self.dtype)
            for k in sorted({self.owner[i] for i in changed if i in self.owner}):
                self._restack(k)
            stacked = nested(self.stacked_paths, self.stacks) if self.sources else None
            self.last = Params(nested(self.paths, self.copies), stacked)
        return self.last

    def _restack(self, k: int) -> None:
        """Stacks the working copies of stacked variable ``k``'s layers. Each layer is copied into its slot
        of the stack and, where the slot can be a view (a zero-copy array on its memory), replaced by that
        view at once (the model's variable too when the step reads it as stored): the replaced array is
        freed before the next layer is copied, so stacking holds one layer beside the weights, not a
        whole stack, and the stack is the only copy in memory."""
        sources = self.sources[k]
        if len(sources) == 1:
            self.stacks[k] = self.copies[sources[0]]
            return
        first = self.copies[sources[0]]
        host = aligned_empty((len(sources), *first.shape), first.dtype)
        for slot, i in zip(host, sources, strict=True):
            slot[...] = np.asarray(self.copies[i])
            view = jax.device_put(slot)
            if not shares_memory(view, slot):  # a copy: the layer keeps its own array
                continue
            if self.copies[i] is self.values[i] and _rebind(self.variables[i], view):  # read as stored
                self.values[i] = view
            self.copies[i] = view
            return_freed_memory()  # the replaced array's memory, before the next slot's pages are touched
        self.stacks[k] = jax.device_put(host)


def nested(paths: list[tuple], values: list[Array]) -> dict:
    """``values`` at their ``paths`` as nested plain dicts (``nnx.to_pure_dict``'s form of a state, which
    ``nnx.merge`` takes): ``jax.jit`` flattens plain dicts in C++ at every call, where an ``nnx.State`` of
    Variables goes through Python (a Finch 12 x 768 decode step's dispatch: 5.0 -> 1.6 ms, docs/speed.md)."""
    root: dict = {}
    for path, value in zip(paths, values, strict=True):
        node = root
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return root


def _rebind(variable: nnx.Variable, value: Array) -> bool:
    """Sets ``variable`` to ``value`` (the same values, in a stack's memory); False where Flax refuses: inside
    a trace the variable was not created in (a model first called inside someone's jit), where the model
    keeps its own array beside the stack."""
    try:
        variable.set_raw_value(value)
    except TraceContextError:
        return False
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def return_freed_memory() -> None:
    """Gives the heap memory freed so far back to the system (glibc's ``malloc_trim``; elsewhere nothing).
    The per-layer arrays a stack replaces go back to malloc's arena, which keeps them resident unless
    trimmed (Finch 12 x 768: 1371 MiB resident after stacking, 1040 trimmed; docs/speed.md)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


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


def _entry(model: nnx.Module) -> _Entry | None:
    """``model``'s cached entry, rebuilt when a module or variable on its paths was replaced; None when a
    parameter is traced."""
    entry = _ENTRIES.get(model)
    if entry is None or not entry.is_current(model):
        _, variables = nnx.split(model)
        if is_traced(variables):
            return None
        entry = _ENTRIES[model] = _Entry(model, variables)
    return entry


def compiled_call(
    model: nnx.Module, tokens: Tokens, state: Any, last_only: bool, starts: Array | None = None
) -> tuple[Array, Any] | None:
    """``model``'s jitted step on its current parameters; None when a parameter is traced (the caller
    runs op by op instead, inside the enclosing transform)."""
    entry = _entry(model)
    params = None if entry is None else entry.params()
    if params is None:
        return None
    return entry.step(params, tokens, state, last_only=last_only, starts=starts)
