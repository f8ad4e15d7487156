"""Numerics of the WKV forms against the float64 references: error metric, random inputs, and a sweep.

Shared by ``experiments/compare_numerics.py`` and ``notebooks/wkv_numerics.ipynb``::

    rows = compare_forms("v6", lengths=(64, 1024), regimes=("typical", "near1"))
    print(markdown_table(rows))

Every row compares one form (``recurrent``, ``scan``, ``chunked``, ``pallas``) at one input dtype, length
and decay regime with the float64 reference run on the *same* (already rounded) inputs, so the errors
measure the algorithm and its float32 / bfloat16 arithmetic, not the rounding of the inputs. Compared:
``y``, the final state, and the gradient of a fixed random projection of both with respect to every input
(initial state included). Errors are ``||a - b|| / ||b||`` in float64 numpy (see :func:`relative_error`).

WKV-4 states are stored at different exponents by different forms (``(num, den) * e^{max_exp}`` is what a
state means), so the state compared, and projected in the loss, is ``(num, den)`` rescaled to the
reference's final ``max_exp``.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.wkv.v4 import WKV4State, wkv4, wkv4_reference
from rwkv_jax.wkv.v6 import wkv6, wkv6_reference

FAMILIES = ("v4", "v6")
DTYPES = ("float32", "bfloat16")
# Ranges of log(-w_log), sampled log-uniformly: w_log = -exp(x). The models' decays lie within "mixed".
DECAY_LOG_RANGES = {
    "typical": (-6.0, 1.0),  # per-step decay from 0.9975 down to 0.066
    "near0": (4.5, 5.0),  # w_log ~ -exp(5): per-step decay ~ e^-148, below float32 range
    "near1": (math.log(1e-7), math.log(1e-6)),  # w_log ~ -1e-6: decay 1 - 1e-6, nearly no forgetting
    "mixed": (math.log(1e-7), 5.0),  # the whole range, independently per element
}
# WKV-4 only: typical decays with keys up to |k| = 60 (e^k overflows float32 without the running maximum).
LARGE_KEY = 60.0
REGIMES = {"v4": (*DECAY_LOG_RANGES, "large_k"), "v6": tuple(DECAY_LOG_RANGES)}
FORMS = {"v4": ("recurrent", "scan", "pallas"), "v6": ("recurrent", "scan", "chunked", "pallas")}
INPUT_NAMES = {
    "v4": ("w_log", "u", "k", "v", "state.num", "state.den", "state.max_exp"),
    "v6": ("r", "k", "v", "w_log", "u", "state"),
}
# A reference gradient of smaller norm (inputs are O(1)) is made of factors e^w below float32's smallest
# normal number (1.2e-38; near0 has e^w ~ e^-148) times sums of O(1..1e3): float32 flushes those factors to
# zero, so the forms give 0 and the relative error (1.0) says nothing about them. The WKV tests' threshold.
NEGLIGIBLE_GRADIENT = 1e-30


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Largest acceptable relative errors of the outputs (y, final state) and of the gradients."""

    forward: float
    gradient: float


# The project's acceptance bounds: float32 as the WKV tests; bfloat16 outputs are rounded to 8 mantissa bits.
BOUNDS = {"float32": Bounds(forward=1e-5, gradient=1e-4), "bfloat16": Bounds(forward=5e-3, gradient=1e-2)}


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


def make_inputs(
    family: str,
    *,
    batch: int = 1,
    length: int = 64,
    heads: int = 2,
    size: int = 16,
    dtype: str = "float32",
    regime: str = "typical",
    seed: int = 0,
) -> tuple[jax.Array, ...]:
    """Random WKV inputs with a random initial state, as the flat argument tuple of the family.

    v4: ``(w_log [C], u [C], k [B,T,C], v [B,T,C], num [B,C], den [B,C], max_exp [B,C])`` with ``C = heads *
    size``. v6: ``(r, k, v [B,T,H,N], w_log [B,T,H,N], u [H,N], state [B,H,N,N])``. The sequences (k, v and
    r) are in ``dtype``; w_log, u and the state are float32, as the models pass them. ``regime`` picks the
    decays (:data:`DECAY_LOG_RANGES`; v4 also ``"large_k"``: typical decays, ``k ~ U(-60, 60)``).
    """
    _check_choice("family", family, FAMILIES)
    _check_choice("dtype", dtype, DTYPES)
    _check_choice(f"regime for {family}", regime, REGIMES[family])
    for name, value in (("batch", batch), ("length", length), ("heads", heads), ("size", size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    rng = np.random.default_rng(seed)
    low, high = DECAY_LOG_RANGES["typical" if regime == "large_k" else regime]

    def log_decay(shape: tuple[int, ...]) -> jax.Array:
        return jnp.asarray(-np.exp(rng.uniform(low, high, shape)), jnp.float32)

    def normal(shape: tuple[int, ...], as_dtype: str = "float32") -> jax.Array:
        return jnp.asarray(rng.normal(size=shape), as_dtype)

    if family == "v4":
        channels = heads * size
        sequence = (batch, length, channels)
        k = rng.uniform(-LARGE_KEY, LARGE_KEY, sequence) if regime == "large_k" else rng.normal(size=sequence)
        row = (batch, channels)
        den = jnp.asarray(rng.uniform(0.5, 2.0, row), jnp.float32)  # a valid state has den > 0
        max_exp = jnp.asarray(rng.normal(0.0, 2.0, row), jnp.float32)
        return (log_decay((channels,)), normal((channels,)), jnp.asarray(k, dtype), normal(sequence, dtype),
                normal(row), den, max_exp)  # fmt: skip
    sequence = (batch, length, heads, size)
    r, k, v = (normal(sequence, dtype) for _ in range(3))
    return r, k, v, log_decay(sequence), normal((heads, size)), normal((batch, heads, size, size))


def _run_v4(impl: str | None) -> Callable:
    """``(*inputs) -> (y, WKV4State)`` for a form of WKV-4 (None: the float64 reference)."""

    def run(w_log, u, k, v, num, den, max_exp):
        state = WKV4State(num, den, max_exp)
        if impl is None:
            return wkv4_reference(w_log, u, k, v, state)
        return wkv4(w_log, u, k, v, state, impl=impl)

    return run


def _run_v6(impl: str | None, chunk_size: int) -> Callable:
    """``(*inputs) -> (y, state)`` for a form of WKV-5/6 (None: the float64 reference)."""

    def run(r, k, v, w_log, u, state):
        if impl is None:
            return wkv6_reference(r, k, v, w_log, u, state)
        return wkv6(r, k, v, w_log, u, state, impl=impl, chunk_size=chunk_size)

    return run


def _comparable_state(family: str, final, reference_max_exp) -> jax.Array:
    """The final state as a single array comparable across forms (v4: num, den at the reference exponent)."""
    if family == "v6":
        return final
    scale = jnp.exp(final.max_exp - reference_max_exp.astype(final.max_exp.dtype))
    return jnp.stack([final.num * scale, final.den * scale])


def _projection_loss(family: str, run: Callable, weights, reference_max_exp, *inputs) -> jax.Array:
    """``<W_y, y> + <W_s, state>``: a fixed random projection, so its gradient checks every output path."""
    y, final = run(*inputs)
    state = _comparable_state(family, final, reference_max_exp)
    weight_y, weight_state = weights
    return jnp.sum(weight_y * y.astype(weight_y.dtype)) + jnp.sum(weight_state * state)


@dataclasses.dataclass(frozen=True)
class Row:
    """One comparison: a form at one dtype, length and regime against the float64 reference.

    y, state: relative errors of the outputs; gradients: relative error per input name (NaN when the form
    did not run). underflowing: inputs whose reference gradient underflows float32 (norm below
    :data:`NEGLIGIBLE_GRADIENT`; its relative error says nothing; listed, but left out of
    :meth:`worst_gradient`). note: why a form was
    skipped (``skipped``), or which gradients underflow.
    """

    family: str
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
        """(input name, error) of the largest gradient error; NaN and Inf win, underflowing inputs skipped."""
        candidates = [(n, e) for n, e in self.gradients.items() if n not in self.underflowing]
        if not candidates:
            return "", math.nan
        return max(candidates, key=lambda item: math.inf if math.isnan(item[1]) else item[1])

    def within_bounds(self) -> bool:
        """Whether y, state and every gradient meet :data:`BOUNDS` for the input dtype (NaN fails)."""
        bounds = BOUNDS[self.dtype]
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
            family=record["family"], form=record["form"], dtype=record["dtype"], regime=record["regime"],
            length=int(record["length"]), shape=record["shape"], y=float(record["y"]),
            state=float(record["state"]), gradients=grads, underflowing=tuple(record["underflowing"].split()),
            note=record["note"], skipped=record["skipped"] == "True",
        )  # fmt: skip


@functools.cache
def _compiled(family: str, impl: str | None, chunk_size: int) -> tuple[Callable, Callable]:
    """Jitted forward and gradient of one form (cached: one compilation per form and input shape)."""
    run = _run_v4(impl) if family == "v4" else _run_v6(impl, chunk_size)
    num_inputs = len(INPUT_NAMES[family])
    loss = functools.partial(_projection_loss, family, run)
    gradient = jax.grad(loss, argnums=tuple(range(2, 2 + num_inputs)))
    return jax.jit(run), jax.jit(gradient)


def _reference_max_exp(family: str, final) -> jax.Array | None:
    return final.max_exp if family == "v4" else None


def _reference(family: str, inputs: tuple, weights: tuple) -> tuple[np.ndarray, np.ndarray, list, object]:
    """y, comparable state, gradients (all float64 numpy) and v4's final max_exp, from the reference."""
    with jax.enable_x64(True):
        inputs64 = tuple(jnp.asarray(np.asarray(x, np.float64)) for x in inputs)
        weights64 = tuple(jnp.asarray(w, jnp.float64) for w in weights)
        forward, gradient = _compiled(family, None, 0)
        y, final = forward(*inputs64)
        max_exp = _reference_max_exp(family, final)
        state = _comparable_state(family, final, max_exp)
        grads = gradient(weights64, max_exp, *inputs64)
        to_numpy = functools.partial(np.asarray, dtype=np.float64)
        return (
            to_numpy(y),
            to_numpy(state),
            [to_numpy(g) for g in grads],
            None if max_exp is None else to_numpy(max_exp),
        )


def _compare_one(family: str, form: str, inputs: tuple, reference: tuple, weights: tuple, chunk_size: int):
    """(y error, state error, gradient errors) of ``form`` on ``inputs`` against ``reference``."""
    y_ref, state_ref, grads_ref, max_exp_ref = reference
    forward, gradient = _compiled(family, form, chunk_size)
    max_exp = None if max_exp_ref is None else jnp.asarray(max_exp_ref, jnp.float32)
    y, final = forward(*inputs)
    state = _comparable_state(family, final, max_exp)
    weights32 = tuple(jnp.asarray(w, jnp.float32) for w in weights)
    grads = gradient(weights32, max_exp, *inputs)
    gradient_errors = {
        name: relative_error(g, g_ref)
        for name, g, g_ref in zip(INPUT_NAMES[family], grads, grads_ref, strict=True)
    }
    return relative_error(y, y_ref), relative_error(state, state_ref), gradient_errors


def compare_forms(
    family: str,
    forms: Sequence[str] | None = None,
    dtypes: Sequence[str] = DTYPES,
    lengths: Sequence[int] = (64,),
    regimes: Sequence[str] | None = None,
    *,
    batch: int = 1,
    heads: int = 2,
    size: int = 16,
    chunk_size: int = 64,
    max_lengths: dict[str, int] | None = None,
    seed: int = 0,
    progress: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Every form at every dtype, length and regime against the float64 reference; one :class:`Row` each.

    Args:
      family: "v4" (RWKV-4, ``C = heads * size`` channels) or "v6" (Eagle/Finch, ``[B, T, H, N]``).
      forms: names from :data:`FORMS` (None: all of the family's). A ``pallas`` form that the dispatcher
        or the kernel rejects gives a row with NaN errors and the reason in ``note``.
      dtypes: input dtypes of the sequences ("float32", "bfloat16").
      lengths: sequence lengths T.
      regimes: decay regimes (None: all of the family's, :data:`REGIMES`).
      batch, heads, size: B, H, N of the inputs.
      chunk_size: chunk of the chunked and Pallas forms of v6.
      max_lengths: per form, the longest T to run (e.g. ``{"pallas": 256}`` for the slow interpreter on
        CPU); longer lengths give a row with NaN errors and a note saying so.
      seed: the inputs of (length, regime, dtype) come from a seed derived from it (the same inputs whatever
        else is requested).
      progress: called with each row as it is made.

    Returns:
      rows ordered by length, regime, dtype, form.
    """
    _check_choice("family", family, FAMILIES)
    forms = tuple(forms or FORMS[family])
    regimes = tuple(regimes or REGIMES[family])
    for form in forms:
        _check_choice(f"form of {family}", form, FORMS[family])
    for dtype in dtypes:
        _check_choice("dtype", dtype, DTYPES)
    for regime in regimes:
        _check_choice(f"regime for {family}", regime, REGIMES[family])
    max_lengths = max_lengths or {}
    rows = []
    for length in lengths:
        for regime in regimes:
            for dtype in dtypes:
                case_seed = seed + 1000 * length + 10 * REGIMES[family].index(regime) + DTYPES.index(dtype)
                shape = dict(batch=batch, length=length, heads=heads, size=size)
                inputs = make_inputs(family, **shape, dtype=dtype, regime=regime, seed=case_seed)
                label = dict(
                    family=family, dtype=dtype, length=length, regime=regime,
                    shape=_shape_label(family, batch, length, heads, size),
                )  # fmt: skip
                for row in _case_rows(family, forms, inputs, label, case_seed, chunk_size, max_lengths):
                    rows.append(row)
                    if progress is not None:
                        progress(row)
    return rows


def _case_rows(family, forms, inputs, label, seed, chunk_size, max_lengths) -> Iterator[Row]:
    """The rows of every form on one set of inputs, against one run of the reference."""
    rng = np.random.default_rng(seed + 1)
    y_shape = inputs[2].shape  # k: [B, T, C] or [B, T, H, N]
    state_shape = inputs[-1].shape if family == "v6" else (2, *inputs[-1].shape)  # v4: (num, den)
    weights = (rng.normal(size=y_shape), rng.normal(size=state_shape))
    reference = _reference(family, inputs, weights)
    underflowing = tuple(
        name
        for name, g in zip(INPUT_NAMES[family], reference[2], strict=True)
        if np.linalg.norm(g) < NEGLIGIBLE_GRADIENT
    )
    for form in forms:
        row = _row(family, form, inputs, reference, weights, chunk_size, max_lengths, {**label, "form": form})
        yield dataclasses.replace(row, underflowing=underflowing, note=_note(row.note, underflowing))


def _shape_label(family: str, batch: int, length: int, heads: int, size: int) -> str:
    if family == "v4":
        return f"B={batch} T={length} C={heads * size}"
    return f"B={batch} T={length} H={heads} N={size}"


def _note(note: str, underflowing: tuple[str, ...]) -> str:
    if not underflowing:
        return note
    names = ", ".join(underflowing)
    extra = f"reference grad of {names} below float32 range, norm < {NEGLIGIBLE_GRADIENT:g} (not counted)"
    return f"{note}; {extra}" if note else extra


def _skipped(label: dict, family: str, note: str) -> Row:
    nan_grads = {name: math.nan for name in INPUT_NAMES[family]}
    return Row(**label, y=math.nan, state=math.nan, gradients=nan_grads, note=note, skipped=True)


def _row(family, form, inputs, reference, weights, chunk_size, max_lengths, label) -> Row:
    """The comparison row of one form; a skipped row for a too-long T or a Pallas kernel that cannot run."""
    limit = max_lengths.get(form)
    if limit is not None and label["length"] > limit:
        return _skipped(label, family, f"skipped: T > {limit} for {form} on {jax.default_backend()}")
    try:
        y_error, state_error, gradient_errors = _compare_one(
            family, form, inputs, reference, weights, chunk_size
        )
    except Exception as error:  # only the kernel may be missing or unsupported; other forms must work
        if form != "pallas":
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return _skipped(label, family, f"pallas unavailable: {type(error).__name__}: {first_line[:160]}")
    return Row(**label, y=y_error, state=state_error, gradients=gradient_errors)


def markdown_table(rows: Sequence[Row]) -> str:
    """A Markdown table: y, state, the worst gradient (and which input), pass/fail, notes."""
    header = "| family | form | dtype | T | regime | y | state | worst grad | ok | note |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        name, worst = row.worst_gradient()
        grad = f"{format_error(worst)} ({name})" if name else format_error(worst)
        ok = "–" if row.skipped else ("yes" if row.within_bounds() else "**no**")
        cells = (row.family, row.form, row.dtype, row.length, row.regime, format_error(row.y),
                 format_error(row.state), grad, ok, row.note)  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def summary_table(rows: Sequence[Row]) -> str:
    """A Markdown table of the worst errors per (family, form, dtype) over all lengths and regimes."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        if not row.skipped:
            groups.setdefault((row.family, row.form, row.dtype), []).append(row)

    def worst(members: list[Row], error_of: Callable[[Row], float]) -> str:
        row = max(members, key=lambda r: math.inf if math.isnan(error_of(r)) else error_of(r))
        return f"{format_error(error_of(row))} (T={row.length}, {row.regime})"

    header = "| family | form | dtype | rows | max T | worst y | worst state | worst grad | all ok |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for (family, form, dtype), members in groups.items():
        cells = (
            family, form, dtype, len(members), max(r.length for r in members),
            worst(members, lambda r: r.y), worst(members, lambda r: r.state),
            worst(members, lambda r: r.worst_gradient()[1]),
            "yes" if all(r.within_bounds() for r in members) else "**no**",
        )  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)
