"""Numerics of the WKV forms against the float64 references: error metric, random inputs, and a sweep.

Shared by ``experiments/compare_numerics.py`` and ``notebooks/wkv_numerics.ipynb``::

    rows = compare_forms("rwkv6", lengths=(64, 1024), regimes=("typical", "near1"))
    print(markdown_table(rows))

The families swept are the registered ones that declare a numerics case (``Family.numerics``, a
:class:`rwkv_jax.wkv.numerics_case.NumericsCase`: random inputs per regime, how the final state compares,
default sizes); the forms, the input names and the float64 reference come from the family's WKV table
(``Family.wkv``). Nothing here names a family.

Every row compares one form (``recurrent``, ``scan``, ``chunked``, ``pallas``: those of the family's table)
at one input dtype, length and regime with the float64 reference run on the *same* (already rounded)
inputs, so the errors measure the algorithm and its float32 / bfloat16 arithmetic, not the rounding of the
inputs. Compared: ``y``, the final state (as the case makes it comparable), and the gradient of a fixed
random projection of both with respect to every input (initial state included). Errors are
``||a - b|| / ||b||`` in float64 numpy (see :func:`relative_error`).
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.array_typing import Array
from rwkv_jax.models.family import Family, families, get_family
from rwkv_jax.wkv.numerics_case import Shape, to_float64

DTYPES = ("float32", "bfloat16")
# A reference gradient of smaller norm (inputs are O(1)) is made of factors e^w below float32's smallest
# normal number (1.2e-38; near0 has e^w ~ e^-148) times sums of O(1..1e3): float32 flushes those factors to
# zero, so the forms give 0 and the relative error (1.0) says nothing about them. The WKV tests' threshold.
NEGLIGIBLE_GRADIENT = 1e-30


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Largest acceptable relative errors of the outputs (y, final state) and of the gradients."""

    forward: float
    gradient: float


# The project's acceptance bounds for a WKV without measured ones; bfloat16 outputs are rounded to 8 mantissa
# bits (worst measured over every family: y 1.8e-3, gradients 4.5e-3, so 2.8x and 2.2x). A family's float32
# rows use its own measured bounds (NumericsCase.float32_bounds, :func:`bounds_of`).
BOUNDS = {"float32": Bounds(forward=1e-5, gradient=1e-4), "bfloat16": Bounds(forward=5e-3, gradient=1e-2)}


def bounds_of(family: str, dtype: str) -> Bounds:
    """The bounds a row of ``family`` (a registry name) in ``dtype`` must meet: the family's measured float32
    bounds, else :data:`BOUNDS` of the dtype."""
    case = get_family(family).numerics if family in {f.name for f in families()} else None
    if dtype == "float32" and case is not None:
        return Bounds(*case.float32_bounds)
    return BOUNDS[dtype]


def relative_error(actual, expected) -> float:
    """``||actual - expected|| / ||expected||`` in float64, with non-finite results made explicit.

    Returns NaN if either array holds a NaN and Inf if ``actual`` holds an Inf (never a finite number that
    hides them; numpy, not XLA, does the reduction, so NaN is not dropped by a max). A zero reference
    gives 0.0 when ``actual`` is zero too and Inf otherwise.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"relative_error: shapes differ, {actual.shape} vs reference {expected.shape}")
    if np.isnan(actual).any() or np.isnan(expected).any():
        return math.nan
    if not np.isfinite(actual).all() or not np.isfinite(expected).all():
        return math.inf
    reference_norm = np.linalg.norm(expected)
    difference = float(np.linalg.norm(actual - expected))
    if reference_norm == 0.0:
        return 0.0 if difference == 0.0 else math.inf
    return difference / float(reference_norm)


def format_error(error: float) -> str:
    """``"NaN"``, ``"Inf"`` or the error in 2-digit scientific notation."""
    if math.isnan(error):
        return "NaN"
    if math.isinf(error):
        return "Inf"
    return f"{error:.1e}"


def _check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(map(repr, allowed))}")


def swept_families() -> tuple[Family, ...]:
    """The registered families that declare a numerics case and a WKV table, in registration order."""
    return tuple(f for f in families() if f.numerics is not None and f.wkv is not None)


def swept_family(name: str) -> Family:
    """The registered family ``name``; an error listing the swept ones if it has no numerics case."""
    names = [f.name for f in swept_families()]
    _check_choice("family", name, names)
    return get_family(name)


def gradient_names(family: Family) -> tuple[str, ...]:
    """Names of the gradients compared: the WKV inputs, then the arrays of the initial state."""
    return (*family.wkv.input_names, *family.wkv.state_names)


def make_inputs(
    family: str,
    *,
    batch: int | None = None,
    length: int = 64,
    heads: int | None = None,
    size: int | None = None,
    dtype: str = "float32",
    regime: str = "typical",
    seed: int = 0,
) -> tuple[tuple[Array, ...], Any]:
    """Random WKV inputs of one regime: ``(inputs, state)``, inputs in the argument order of the family's
    WKV table (``family.wkv.input_names``) and a random initial state.

    ``batch``, ``heads``, ``size`` (B, H, N; None: the case's defaults) and ``length`` (T) size them; the
    sequences are in ``dtype``, decays and the state float32, as the models pass them. The regimes are the
    family's (``family.numerics.regimes``); shapes and value ranges are described by its case module.
    """
    case = swept_family(family).numerics
    _check_choice("dtype", dtype, DTYPES)
    _check_choice(f"regime for {family}", regime, tuple(case.regimes))
    shape = _shape(case.default_shape, batch, length, heads, size)
    return case.make_inputs(np.random.default_rng(seed), shape, dtype, regime)


def _shape(default: Shape, batch: int | None, length: int, heads: int | None, size: int | None) -> Shape:
    """``default`` with the given sizes put in (None keeps the default)."""
    given = dict(batch=batch, length=length, heads=heads, size=size)
    return dataclasses.replace(default, **{name: v for name, v in given.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class Row:
    """One comparison: a form at one dtype, length and regime against the float64 reference.

    family, wkv: the registry name and the WKV name (``"rwkv7"``, ``"WKV-7"``). y, state: relative errors
    of the outputs; gradients: relative error per input name (NaN when the form did not run). underflowing:
    inputs whose reference gradient underflows float32 (norm below :data:`NEGLIGIBLE_GRADIENT`; its
    relative error says nothing; listed, but left out of :meth:`worst_gradient`). note: why a form was
    skipped (``skipped``), or which gradients underflow.
    """

    family: str
    wkv: str
    form: str
    dtype: str
    length: int
    regime: str
    shape: str
    y: float
    state: float
    gradients: dict[str, float]
    underflowing: tuple[str, ...] = ()
    note: str = ""
    skipped: bool = False

    def worst_gradient(self) -> tuple[str, float]:
        """(input name, error) of the largest gradient error; NaN and Inf win, underflowing inputs skipped;
        ``("", NaN)`` for a skipped row."""
        candidates = [(n, e) for n, e in self.gradients.items() if n not in self.underflowing]
        if self.skipped or not candidates:
            return "", math.nan
        return max(candidates, key=lambda item: math.inf if math.isnan(item[1]) else item[1])

    def within_bounds(self) -> bool:
        """Whether y, state and every gradient meet the bounds of the family and dtype (:func:`bounds_of`;
        NaN fails)."""
        bounds = bounds_of(self.family, self.dtype)
        worst = self.worst_gradient()[1]
        errors = ((self.y, bounds.forward), (self.state, bounds.forward), (worst, bounds.gradient))
        return all(error <= bound for error, bound in errors)  # NaN <= bound is False

    def flat(self) -> dict[str, object]:
        """A flat dict for CSV: one column per gradient (``grad_<input>``)."""
        grads = {f"grad_{name}": error for name, error in self.gradients.items()}
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.pop("gradients")
        fields["underflowing"] = " ".join(self.underflowing)
        return {**fields, **grads, "ok": self.within_bounds()}

    @classmethod
    def from_flat(cls, record: dict[str, str]) -> "Row":
        """The row of a CSV record written from :meth:`flat` (empty gradient cells: another family's)."""
        grads = {key[len("grad_") :]: float(v) for key, v in record.items() if key.startswith("grad_") and v}
        return cls(
            family=record["family"], wkv=record["wkv"], form=record["form"], dtype=record["dtype"],
            regime=record["regime"], length=int(record["length"]), shape=record["shape"],
            y=float(record["y"]), state=float(record["state"]), gradients=grads,
            underflowing=tuple(record["underflowing"].split()), note=record["note"],
            skipped=record["skipped"] == "True",
        )  # fmt: skip


@functools.cache
def _compiled(family: str, impl: str | None, chunk_size: int | None) -> tuple[Callable, Callable]:
    """Jitted ``forward(inputs, state) -> (y, final)`` and ``gradient(weights, reference_final, inputs,
    state) -> (input grads, state grads)`` of one form (None: the float64 reference). Cached: one
    compilation per form and input shape."""
    wkv, case = get_family(family).wkv, get_family(family).numerics

    def run(inputs: tuple[Array, ...], state: Any) -> tuple[Array, Any]:
        if impl is None:
            return wkv.reference(*inputs, state)
        return wkv(*inputs, state=state, impl=impl, chunk_size=chunk_size)

    def loss(weights: tuple[Array, Array], reference_final: Any, inputs: tuple, state: Any) -> Array:
        """``<W_y, y> + <W_s, state>``: a fixed random projection, so its gradient checks every output."""
        y, final = run(inputs, state)
        weight_y, weight_state = weights
        compared = case.comparable_state(final, reference_final)
        return jnp.sum(weight_y * y.astype(weight_y.dtype)) + jnp.sum(weight_state * compared)

    return jax.jit(run), jax.jit(jax.grad(loss, argnums=(2, 3)))


class _Reference(NamedTuple):
    """The float64 reference's results on one case, as float64 numpy."""

    y: np.ndarray
    state: np.ndarray  # the comparable state
    gradients: list[np.ndarray]  # in the order of gradient_names
    final: Any  # the final state as the family returns it (anchors comparable_state)
    weights: tuple[np.ndarray, np.ndarray]  # the projection of y and of the comparable state


def _flat_gradients(grads: tuple[tuple[Array, ...], Any]) -> list[np.ndarray]:
    """The input gradients then the state's leaves, float64 numpy."""
    inputs, state = grads
    return [np.asarray(g, np.float64) for g in (*inputs, *jax.tree.leaves(state))]


def _reference(family: Family, inputs: tuple, state: Any, seed: int) -> _Reference:
    """Runs the float64 reference, draws the projection weights (``default_rng(seed)``) and takes the
    reference gradient of the projection."""
    with jax.enable_x64(True):
        inputs64, state64 = to_float64((inputs, state))
        forward, gradient = _compiled(family.name, None, 0)
        y, final = forward(inputs64, state64)
        compared = family.numerics.comparable_state(final, final)
        rng = np.random.default_rng(seed)
        weights = (rng.normal(size=y.shape), rng.normal(size=compared.shape))
        grads = gradient(to_float64(weights), final, inputs64, state64)
        final = jax.tree.map(lambda x: np.asarray(x, np.float64), final)
        to_numpy = functools.partial(np.asarray, dtype=np.float64)
        return _Reference(to_numpy(y), to_numpy(compared), _flat_gradients(grads), final, weights)


def _compare_one(
    family: Family, form: str, inputs: tuple, state: Any, reference: _Reference, chunk_size: int | None
) -> tuple[float, float, dict[str, float]]:
    """(y error, state error, gradient error per input name) of ``form`` against ``reference``."""
    forward, gradient = _compiled(family.name, form, chunk_size)
    reference_final = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), reference.final)
    y, final = forward(inputs, state)
    compared = family.numerics.comparable_state(final, reference_final)
    weights = tuple(jnp.asarray(w, jnp.float32) for w in reference.weights)
    grads = _flat_gradients(gradient(weights, reference_final, inputs, state))
    names = gradient_names(family)
    gradient_errors = {
        name: relative_error(g, g_ref)
        for name, g, g_ref in zip(names, grads, reference.gradients, strict=True)
    }
    return relative_error(y, reference.y), relative_error(compared, reference.state), gradient_errors


def compare_forms(
    family: str,
    forms: Sequence[str] | None = None,
    dtypes: Sequence[str] = DTYPES,
    lengths: Sequence[int] = (64,),
    regimes: Sequence[str] | None = None,
    *,
    batch: int | None = None,
    heads: int | None = None,
    size: int | None = None,
    chunk_size: int | None = None,
    max_lengths: dict[str, int] | None = None,
    seed: int = 0,
    progress: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Every form at every dtype, length and regime against the float64 reference; one :class:`Row` each.

    Args:
      family: a registered family with a numerics case (:func:`swept_families`), e.g. ``"rwkv7"``.
      forms: names of the family's WKV forms (None: all of them, ``family.wkv.form_names``). A ``pallas``
        form that the dispatcher or the kernel rejects gives a row with NaN errors and the reason in ``note``.
      dtypes: input dtypes of the sequences ("float32", "bfloat16").
      lengths: sequence lengths T.
      regimes: the family's regimes (None: all of them, ``family.numerics.regimes``).
      batch, heads, size: B, H, N of the inputs (None: the case's defaults).
      chunk_size: chunk of the chunked and Pallas forms (None: each form's own default,
        ``WKVForms.chunk_size_of``).
      max_lengths: per form, the longest T to run (e.g. ``{"pallas": 256}`` for the slow interpreter on
        CPU); longer lengths give a row with NaN errors and a note saying so.
      seed: the inputs of (length, regime, dtype) come from a seed derived from it (the same inputs whatever
        else is requested).
      progress: called with each row as it is made.

    Returns:
      rows ordered by length, regime, dtype, form.
    """
    record = swept_family(family)
    all_regimes = tuple(record.numerics.regimes)
    forms = tuple(forms or record.wkv.form_names)
    regimes = tuple(regimes or all_regimes)
    for form in forms:
        _check_choice(f"form of {family}", form, record.wkv.form_names)
    for dtype in dtypes:
        _check_choice("dtype", dtype, DTYPES)
    for regime in regimes:
        _check_choice(f"regime for {family}", regime, all_regimes)
    rows = []
    for length in lengths:
        for regime in regimes:
            for dtype in dtypes:
                case_seed = seed + 1000 * length + 10 * all_regimes.index(regime) + DTYPES.index(dtype)
                inputs, state = make_inputs(
                    family, batch=batch, length=length, heads=heads, size=size, dtype=dtype, regime=regime,
                    seed=case_seed,
                )  # fmt: skip
                label = dict(family=family, wkv=record.wkv.name, dtype=dtype, length=length, regime=regime)
                case = _Case(record, inputs, state, label, case_seed, chunk_size, max_lengths or {})
                for row in _case_rows(case, forms):
                    rows.append(row)
                    if progress is not None:
                        progress(row)
    return rows


class _Case(NamedTuple):
    """One set of inputs of the sweep and how its forms run."""

    family: Family
    inputs: tuple[Array, ...]
    state: Any
    label: dict[str, object]  # family, wkv, dtype, length, regime
    seed: int
    chunk_size: int | None
    max_lengths: dict[str, int]


def _case_rows(case: _Case, forms: Sequence[str]) -> Iterator[Row]:
    """The rows of every form on one set of inputs, against one run of the reference."""
    reference = _reference(case.family, case.inputs, case.state, case.seed + 1)
    underflowing = tuple(
        name
        for name, g in zip(gradient_names(case.family), reference.gradients, strict=True)
        if np.linalg.norm(g) < NEGLIGIBLE_GRADIENT
    )
    label = {**case.label, "shape": _shape_label(case)}
    for form in forms:
        row = _row(case, form, reference, {**label, "form": form})
        yield dataclasses.replace(row, underflowing=underflowing, note=_note(row.note, underflowing))


def _shape_label(case: _Case) -> str:
    """``"B=1 T=64 H=2 N=16"``: the dimension sizes of the inputs, as the WKV table names them."""
    sizes = case.family.wkv.sizes(case.inputs, case.state)
    return " ".join(f"{letter}={size}" for letter, size in sizes.items())


def _note(note: str, underflowing: tuple[str, ...]) -> str:
    if not underflowing:
        return note
    names = ", ".join(underflowing)
    extra = f"reference grad of {names} below float32 range, norm < {NEGLIGIBLE_GRADIENT:g} (not counted)"
    return f"{note}; {extra}" if note else extra


def _skipped(label: dict, family: Family, note: str) -> Row:
    nan_grads = {name: math.nan for name in gradient_names(family)}
    return Row(**label, y=math.nan, state=math.nan, gradients=nan_grads, note=note, skipped=True)


def _row(case: _Case, form: str, reference: _Reference, label: dict) -> Row:
    """The comparison row of one form; a skipped row for a too-long T or a Pallas kernel that cannot run."""
    limit = case.max_lengths.get(form)
    if limit is not None and label["length"] > limit:
        return _skipped(label, case.family, f"skipped: T > {limit} for {form} on {jax.default_backend()}")
    try:
        y_error, state_error, gradient_errors = _compare_one(
            case.family, form, case.inputs, case.state, reference, case.chunk_size
        )
    except Exception as error:  # only the kernel may be missing or unsupported; other forms must work
        if form != "pallas":
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return _skipped(label, case.family, f"pallas unavailable: {type(error).__name__}: {first_line[:160]}")
    return Row(**label, y=y_error, state=state_error, gradients=gradient_errors)


def markdown_table(rows: Sequence[Row]) -> str:
    """A Markdown table: y, state, the worst gradient (and which input), pass/fail, notes."""
    header = "| family | WKV | form | dtype | T | regime | y | state | worst grad | ok | note |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        name, worst = row.worst_gradient()
        grad = f"{format_error(worst)} ({name})" if name else format_error(worst)
        ok = "–" if row.skipped else ("yes" if row.within_bounds() else "**no**")
        cells = (row.family, row.wkv, row.form, row.dtype, row.length, row.regime, format_error(row.y),
                 format_error(row.state), grad, ok, row.note)  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def summary_table(rows: Sequence[Row]) -> str:
    """A Markdown table of the worst errors per (family, form, dtype) over all lengths and regimes."""
    groups: dict[tuple[str, str, str, str], list[Row]] = {}
    for row in rows:
        if not row.skipped:
            groups.setdefault((row.family, row.wkv, row.form, row.dtype), []).append(row)

    def worst(members: list[Row], error_of: Callable[[Row], float]) -> str:
        row = max(members, key=lambda r: math.inf if math.isnan(error_of(r)) else error_of(r))
        return f"{format_error(error_of(row))} (T={row.length}, {row.regime})"

    header = "| family | WKV | form | dtype | rows | max T | worst y | worst state | worst grad | all ok |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for (family, wkv, form, dtype), members in groups.items():
        cells = (
            family, wkv, form, dtype, len(members), max(r.length for r in members),
            worst(members, lambda r: r.y), worst(members, lambda r: r.state),
            worst(members, lambda r: r.worst_gradient()[1]),
            "yes" if all(r.within_bounds() for r in members) else "**no**",
        )  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)
