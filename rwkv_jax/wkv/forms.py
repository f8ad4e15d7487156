"""The forms of a WKV recurrence as a table: input validation, the empty state and dispatch, written once.

Each family module (``v4``, ``v6``, ``v7``) declares a :class:`WKVForms`: the names and dimension letters of
its inputs and state, the function of each :class:`Impl` (all with the family's signature), and what
``AUTO`` means. Its public function (``wkv6(r, k, v, w_log, u, state, impl=..., chunk_size=...)``) is one
call of the table.

``AUTO`` means: RECURRENT for one token (decoding: one step, no chunk padding or kernel launch); the
family's ``auto_cpu`` on CPU; on GPU and TPU the family's Pallas kernel only where that kernel has been
verified on real hardware (:data:`VERIFIED_KERNEL_PLATFORMS`), else ``auto_accelerated``, a pure-JAX form.
``Impl.PALLAS`` is always available by name as an explicit opt-in.

Packed documents. Every call takes an optional ``starts [B, T]`` bool mask, "a document starts at this
token": before such a token the state returns to the call's initial state (``state``; zeros when None), so
documents packed into one row do not see each other (flash-linear-attention's ``cu_seqlens``, jaxrwkv's
``new_starts``). Only the forms in :attr:`WKVForms.takes_starts` accept it; any other form refuses it with a
ValueError naming those that do, and AUTO picks one of them. ``starts=None`` runs exactly the code it ran
before (no extra operation).
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.array_typing import Array
from rwkv_jax.wkv.context import Transition, context_size, sharded_over_context
from rwkv_jax.wkv.impl import Impl

# Platforms where a family's Pallas kernel has been run against the float64 reference on real hardware
# (experiments/check_device.py). Empty until that check has passed on a GPU or TPU: AUTO never picks an
# unverified kernel.
VERIFIED_KERNEL_PLATFORMS: dict[str, frozenset[str]] = {}

Form = Callable[..., tuple[Array, Any]]  # form(*inputs, state, chunk_size) -> (y, final state)


def without_chunks(form: Callable[..., tuple[Array, Any]]) -> Form:
    """Adapts ``form(*inputs, state, **options)`` (a form without chunks) to the table's signature."""

    def run(*args: Any, chunk_size: int, **options: Any) -> tuple[Array, Any]:
        del chunk_size
        return form(*args, **options)

    return run


@dataclasses.dataclass(frozen=True)
class WKVForms:
    """One WKV recurrence and its forms.

    Attributes:
      name: for messages and tables (``"WKV-6"``).
      inputs: ``(name, dimension letters)`` of each positional input, e.g. ``("r", "BTHN")``, ``("u", "HN")``.
        The first input whose letters include ``T`` is the anchor the others are compared with.
      state: dimension letters of each state array (``("BHNN",)``; WKV-4: three ``"BC"``).
      state_names: names of the state arrays in messages (``("state",)``; WKV-4: ``state.num`` ...).
      empty_state: ``empty_state(sizes) -> state`` from the dimension sizes (``{"B": 2, "H": 4, ...}``).
      forms: the function of each concrete form, ``form(*inputs, state, chunk_size=...) -> (y, state)``.
      reference: the float64 reference, ``reference(*inputs, state) -> (y, state)``.
      auto_cpu: what AUTO means on CPU for T > 1.
      auto_accelerated: what AUTO means on GPU and TPU for T > 1 unless a verified kernel exists.
      default_chunk_size: chunk length of the chunked and Pallas forms when none is given, unless
        ``form_chunk_sizes`` names the form.
      form_chunk_sizes: the forms whose chunk length when none is given is not ``default_chunk_size``
        (WKV-7: the chunked form's 16 is the fastest training form on CPU, the Pallas form keeps 32).
      check_values: optional ``check(inputs, impl, chunk_size)`` for value ranges a form needs (concrete
        inputs only), raising ValueError.
      takes_starts: the forms that accept ``starts=`` (see the module docstring); their functions and
        ``reference`` take it as a keyword argument.
      context: how a shard of tokens maps its incoming state, for context parallelism
        (:mod:`rwkv_jax.wkv.context`); None: the family's time axis is never split over devices.
    """

    name: str
    inputs: tuple[tuple[str, str], ...]
    state: tuple[str, ...]
    state_names: tuple[str, ...]
    empty_state: Callable[[dict[str, int]], Any]
    forms: Mapping[Impl, Form]
    reference: Callable[..., tuple[Array, Any]]
    auto_cpu: Impl
    auto_accelerated: Impl
    default_chunk_size: int = 64
    form_chunk_sizes: Mapping[Impl, int] = dataclasses.field(default_factory=dict)
    check_values: Callable[[dict[str, Array], Impl, int], None] | None = None
    takes_starts: frozenset[Impl] = frozenset()
    context: Transition | None = None

    @property
    def form_names(self) -> tuple[str, ...]:
        """The names of the concrete forms, e.g. ``("recurrent", "scan", "chunked", "pallas")``."""
        return tuple(impl.value for impl in self.forms)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.inputs)

    def resolve(self, impl: Impl | str, length: int, *, with_starts: bool = False) -> Impl:
        """The concrete form for ``impl`` at sequence length ``length``; an unknown one is an error.

        ``with_starts``: the call has a ``starts`` mask; AUTO then falls back to RECURRENT where its usual
        form does not take one, and an explicit form that does not is an error.
        """
        impl = Impl.parse(impl)
        if impl is Impl.AUTO:
            impl = Impl.RECURRENT if length == 1 else self._auto()
            if with_starts and impl not in self.takes_starts:
                impl = Impl.RECURRENT
        if impl not in self.forms:
            names = ", ".join(self.form_names)
            raise ValueError(
                f"WKV form {impl.value!r} is not implemented for {self.name}; available: {names}"
            )
        if with_starts and impl not in self.takes_starts:
            names = ", ".join(i.value for i in self.forms if i in self.takes_starts)
            raise ValueError(
                f"{self.name} form {impl.value!r} does not take a document-start mask (starts=); "
                f"the forms that do: {names}"
            )
        return impl

    def chunk_size_of(self, impl: Impl) -> int:
        """The chunk length the concrete form ``impl`` runs with when the call gives none."""
        return self.form_chunk_sizes.get(impl, self.default_chunk_size)

    def _auto(self) -> Impl:
        platform = jax.default_backend()
        if platform == "cpu":
            return self.auto_cpu
        if Impl.PALLAS in self.forms and platform in VERIFIED_KERNEL_PLATFORMS.get(self.name, frozenset()):
            return Impl.PALLAS
        return self.auto_accelerated

    def sizes(self, args: tuple[Any, ...], state: Any) -> dict[str, int]:
        """Checks shapes and dtypes of ``args`` (the inputs) and ``state``; returns the dimension sizes.

        Raises ValueError naming the first argument that is not as declared.
        """
        named = dict(zip(self.input_names, args, strict=True))
        anchor, anchor_letters = next((n, letters) for n, letters in self.inputs if "T" in letters)
        sizes = _bind(anchor, named[anchor], anchor_letters, {})
        if sizes["T"] < 1:
            raise ValueError(f"{anchor} must have at least one time step; got shape {named[anchor].shape}")
        for name, letters in self.inputs:
            x = named[name]
            if letters == anchor_letters and x.shape != named[anchor].shape:
                legend = _legend(letters)
                raise ValueError(
                    f"{name} must have {anchor}'s shape {legend} = {named[anchor].shape}; got {x.shape}"
                )
            _bind(name, x, letters, sizes)
        for name, x in named.items():
            if not jnp.issubdtype(x.dtype, jnp.floating):
                raise ValueError(f"{name} must be a float array; got dtype {x.dtype}")
        if state is not None:
            arrays = state if len(self.state) > 1 else (state,)
            for name, letters, x in zip(self.state_names, self.state, arrays, strict=True):
                _bind(name, x, letters, sizes)
        w_log = named.get("w_log")
        if w_log is not None and not isinstance(w_log, jax.core.Tracer) and np.any(np.asarray(w_log) > 0):
            raise ValueError(
                f"w_log is the log of a decay in (0, 1] and must be <= 0; max is {np.max(w_log)}"
            )
        return sizes

    def __call__(
        self,
        *args: Array,
        state: Any = None,
        impl: Impl | str = Impl.AUTO,
        chunk_size: int | None = None,
        starts: Array | None = None,
    ) -> tuple[Array, Any]:
        """Validates, picks the form and runs it: ``(*inputs, state) -> (y, final state)``.

        ``starts``: optional ``[B, T]`` bool document-start mask (see the module docstring).
        """
        sizes = self.sizes(args, state)
        if starts is not None:
            check_starts(starts, sizes["B"], sizes["T"])
        impl = self.resolve(impl, sizes["T"], with_starts=starts is not None)
        chunk_size = self.chunk_size_of(impl) if chunk_size is None else chunk_size
        if self.check_values is not None:
            self.check_values(dict(zip(self.input_names, args, strict=True)), impl, chunk_size)
        run = functools.partial(self.forms[impl], chunk_size=chunk_size)
        if starts is None and self._splits_time(sizes["T"]):
            time_args = tuple("T" in letters for _, letters in self.inputs)
            split = sharded_over_context(run, self.context, time_args)
            return split(*args, self.initial_state(state, args))
        if starts is None:
            return run(*args, state)
        return self.forms[impl](*args, state, chunk_size=chunk_size, starts=starts)

    def _splits_time(self, length: int) -> bool:
        """Whether a call of ``length`` tokens runs sharded over the mesh's ``context`` axis."""
        devices = context_size()
        return self.context is not None and devices > 1 and length % devices == 0

    def initial_state(self, state: Any, args: tuple[Array, ...], dtype: jnp.dtype = jnp.float32) -> Any:
        """``state`` cast to ``dtype`` (float32 by default), or the empty state for the inputs' sizes.

        Validates ``args`` and ``state`` first (:meth:`sizes`), so every form checks its inputs.
        """
        sizes = self.sizes(args, state)
        initial = self.empty_state(sizes) if state is None else state
        return jax.tree.map(lambda x: x.astype(dtype), initial)


def check_starts(starts: Array, batch_size: int, length: int) -> None:
    """Raises ValueError unless ``starts`` is a bool array ``[batch_size, length]``."""
    if starts.shape != (batch_size, length) or starts.dtype != jnp.bool_:
        raise ValueError(
            f"starts must be a bool array [B, T] = ({batch_size}, {length}); "
            f"got shape {starts.shape}, dtype {starts.dtype}"
        )


def restart(start: Array, initial: Any, state: Any) -> Any:
    """``initial`` where ``start [B]`` (or ``[B, T]``) is true, else ``state``: leaf by leaf, each leaf's
    leading axes those of ``start``."""

    def pick(first: Array, current: Array) -> Array:
        mask = start.reshape(start.shape + (1,) * (current.ndim - start.ndim))
        return jnp.where(mask, first, current)

    return jax.tree.map(pick, initial, state)


def with_restarts(compose: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """The associative ``compose`` on ``(map, restarts)`` pairs: a map flagged as restarting (it sets the
    state rather than transforming it) discards everything before it. For ``lax.associative_scan`` over
    time (``restarts [B, T]`` bool; each map's leaves ``[B, T, ...]``)."""

    def combined(first: tuple[Any, Array], then: tuple[Any, Array]) -> tuple[Any, Array]:
        (map_1, restarts_1), (map_2, restarts_2) = first, then
        return restart(restarts_2, map_2, compose(map_1, map_2)), restarts_1 | restarts_2

    return combined


def _legend(letters: str) -> str:
    return "[" + ", ".join(letters) + "]"


def _bind(name: str, x: Array, letters: str, sizes: dict[str, int]) -> dict[str, int]:
    """Checks ``x.shape`` against ``letters`` given the sizes bound so far, binding the new letters."""
    expected = tuple(sizes.get(letter, letter) for letter in letters)
    if len(x.shape) != len(letters) or any(
        letter in sizes and sizes[letter] != size for letter, size in zip(letters, x.shape, strict=True)
    ):
        shown = "" if all(isinstance(e, str) for e in expected) else f" = {expected}"
        raise ValueError(f"{name} must be {_legend(letters)}{shown}; got shape {x.shape}")
    # Repeated letters (N in "BHNN") must agree within one array too.
    for letter, size in zip(letters, x.shape, strict=True):
        if sizes.setdefault(letter, size) != size:
            raise ValueError(
                f"{name} must be {_legend(letters)} with equal {letter} sizes; got shape {x.shape}"
            )
    return sizes
