"""Checks the Pallas WKV kernels on a real GPU or TPU against the float64 reference, and times every form.

    python experiments/check_device.py                          # on a GPU/TPU host: model sizes
    python experiments/check_device.py --quick                  # shorter check: B=1, T=1024, one regime
    python experiments/check_device.py --json /tmp/check.json   # also write every result as JSON
    python experiments/check_device.py --interpret --small      # smoke test on CPU (Pallas interpreter)

The full run is sized to take under ten minutes on its first run (estimated, not yet measured on a device):
compiling about 40 programs, and the float64 reference on the host at B=2, T=4096 (WKV-6: a few minutes on a
loaded 2-core CPU); progress lines with the elapsed seconds say where the time goes.

For each family whose WKV table has a Pallas kernel (``--families``: any with a numerics case, e.g. rwkv7 for
its pure-JAX forms) it

1. checks every form of the table (recurrent, scan, chunked, pallas) on the device against the float64
   reference computed on the host CPU (``jax.enable_x64``): the output y, the final state and the gradient
   of a fixed random projection of both with respect to every input and the initial state, as
   ``rwkv_jax.numerics`` does; errors are ``||a - b|| / ||b||`` (``rwkv_jax.numerics.relative_error``) and a
   row passes within the bounds of its family and dtype (``rwkv_jax.numerics.bounds_of``). The check runs at
   T = 4096 with B = 2 (the float64 host reference is the slow part) in the regimes "mixed" (decays over the
   whole range) and, for RWKV-4, "large_k"; RWKV-7 in "large_iclr" (the model's decays, in-context rates
   near 1). The float32 case runs on the bfloat16 case's inputs cast to float32 (exactly representable), so
   one reference serves both dtypes;
2. times every form at model size (WKV-6 and WKV-7: B=8, T=4096, H=32, N=64; RWKV-4: C=4096), forward and
   forward+backward (the gradient of the same projection), median of ``--repeats`` calls after a warm-up.

A form whose compiled program needs more device memory than is free (``memory_analysis`` of the compiled
program against ``memory_stats``; the scan form materialises a state per token) is skipped and says so; a form
that raises is a failure with the error in the note. Matmul precision is JAX's default (what the models run
with); ``--matmul-precision highest`` sets ``jax_default_matmul_precision`` for the pure-JAX forms (the
kernels always use HIGHEST).

Printed: one Markdown table (errors as the worst over the regimes, times, a verdict per form; the kernel rows
decide), one verdict line per kernel, AUTO's form per family, and a final line naming what to add to
``VERIFIED_KERNEL_PLATFORMS`` (``rwkv_jax/wkv/forms.py``) when every kernel passed. ``--interpret`` runs on
the CPU with the Pallas interpreter (TPU layout): it checks this script and the kernels' logic, and verifies
no hardware; ``--small`` (tiny shapes, chunk 16, float32 only unless ``--dtypes``) keeps that run short.
"""

import argparse
import dataclasses
import functools
import json
import math
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax import numerics
from rwkv_jax.models.family import Family, get_family
from rwkv_jax.wkv import forms
from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.numerics_case import to_float64

KERNEL = Impl.PALLAS.value
PREFERRED_REGIMES = ("mixed", "large_k", "large_iclr")  # checked where the family has them
HEADS, HEAD_SIZE = 32, 64  # Finch 1B6-like WKV-6 heads; RWKV-4 uses C = heads * size channels
MODEL_HEADS = {"rwkv4": 64}  # RWKV-4: C = 64 * 64 = 4096 (the 7B width)
MEMORY_FRACTION = 0.9  # of the free device memory a compiled program may need
SEED = 0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """B, T and the head sizes (H, N) of one run; RWKV-4's C is ``heads * size``."""

    batch: int
    length: int
    heads: int = HEADS
    size: int = HEAD_SIZE


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run does: check and timing sizes, regimes, dtypes, repeats and chunk size (None: default)."""

    mode: str
    check: Sizes
    timing: Sizes
    quick_regimes: bool
    dtypes: tuple[str, ...]
    repeats: int
    chunk_size: int | None

    def sizes_for(self, family: Family, sizes: Sizes) -> Sizes:
        """``sizes`` with the family's model heads (RWKV-4: C = 4096) unless this is the small run."""
        if self.mode == "small":
            return sizes
        return dataclasses.replace(sizes, heads=MODEL_HEADS.get(family.name, sizes.heads))

    def regimes_for(self, family: Family) -> tuple[str, ...]:
        """The checked regimes the family has (its first regime if it has none of them)."""
        regimes = [r for r in PREFERRED_REGIMES if r in family.numerics.regimes]
        regimes = regimes or [next(iter(family.numerics.regimes))]
        return tuple(regimes[:1] if self.quick_regimes else regimes)


def make_plan(args: argparse.Namespace) -> Plan:
    """The run's :class:`Plan` from the flags (``--small`` > ``--quick`` > the full run)."""
    if args.small:
        tiny = Sizes(batch=1, length=40, heads=2, size=16)
        return Plan("small", tiny, tiny, True, args.dtypes, args.repeats or 1, args.chunk_size or 16)
    timing = Sizes(batch=8, length=4096)
    if args.quick:
        return Plan("quick", Sizes(1, 1024), timing, True, args.dtypes, args.repeats or 3, args.chunk_size)
    return Plan("full", Sizes(2, 4096), timing, False, args.dtypes, args.repeats or 5, args.chunk_size)


class Progress:
    """Prints a line with the seconds since the start, flushed (the host reference is slow)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f} s] {message}", flush=True)


# ----------------------------------------------------------------------------------------------------------
# The loss both sides differentiate: a fixed random projection of y and the final state.


def projection_loss(run: Callable[..., tuple[Any, Any]], comparable_state: Callable[[Any, Any], Any]):
    """``loss(inputs, state, weights, anchor) -> (value, (y, final, compared))`` with ``run(inputs, state)``.

    ``anchor`` is the final state that ``comparable_state`` compares at (WKV-4: the reference's exponent);
    None takes the run's own final state as a constant (``stop_gradient``), as the reference does.
    """

    def loss(inputs: tuple, state: Any, weights: tuple, anchor: Any) -> tuple[jax.Array, tuple]:
        y, final = run(inputs, state)
        anchor = jax.lax.stop_gradient(final) if anchor is None else anchor
        compared = comparable_state(final, anchor)
        weight_y, weight_state = weights
        value = jnp.sum(weight_y * y.astype(weight_y.dtype)) + jnp.sum(weight_state * compared)
        return value, (y, final, compared)

    return loss


def projection_weights(forward: Callable, comparable_state: Callable, inputs: tuple, state: Any, seed: int):
    """Standard normal weights ``(for y, for the compared state)`` of the shapes ``forward`` gives."""
    y_shape, final_shape = jax.eval_shape(forward, inputs, state)
    compared_shape = jax.eval_shape(comparable_state, final_shape, final_shape)
    rng = np.random.default_rng(seed)
    return rng.normal(size=y_shape.shape), rng.normal(size=compared_shape.shape)


def value_and_gradients(loss: Callable) -> Callable:
    """``(inputs, state, weights, anchor) -> ((value, (y, final, compared)), (input grads, state grads))``."""
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


def flat_gradients(grads: tuple[tuple, Any]) -> list[np.ndarray]:
    """The input gradients, then the state's leaves, as float64 numpy."""
    inputs, state = grads
    return [np.asarray(g, np.float64) for g in (*inputs, *jax.tree.leaves(state))]


# ----------------------------------------------------------------------------------------------------------
# The float64 reference on the host CPU.


class Reference(NamedTuple):
    """The float64 reference's results on one set of inputs (numpy), and the projection it used."""

    y: np.ndarray
    state: np.ndarray
    gradients: list[np.ndarray]
    final: Any  # the final state as the family returns it: the anchor of comparable_state
    weights: tuple[np.ndarray, np.ndarray]


@functools.cache
def reference_functions(name: str) -> tuple[Callable, Callable]:
    """Jitted ``forward(inputs, state)`` and the value-and-gradients of the projection, of the family's
    float64 reference (cached: one compilation per family and shape)."""
    family = get_family(name)
    wkv = family.wkv

    def run(inputs: tuple, state: Any) -> tuple[Any, Any]:
        return wkv.reference(*inputs, state)

    loss = projection_loss(run, family.numerics.comparable_state)
    return jax.jit(run), jax.jit(value_and_gradients(loss))


def host_cpu() -> jax.Device:
    """The host's CPU device; a clear error when JAX_PLATFORMS leaves the CPU backend out."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError as error:
        raise SystemExit(f"check_device needs the CPU backend for the float64 reference ({error})") from None


def host_reference(family: Family, inputs: tuple, state: Any, seed: int) -> Reference:
    """Runs the float64 reference on the host CPU; the projection's weights from ``default_rng(seed)``."""
    forward, check = reference_functions(family.name)
    with jax.enable_x64(True), jax.default_device(host_cpu()):
        inputs64, state64 = to_float64((jax.device_get(inputs), jax.device_get(state)))
        weights = projection_weights(forward, family.numerics.comparable_state, inputs64, state64, seed)
        (_, (y, final, compared)), grads = check(inputs64, state64, to_float64(weights), None)
        as_numpy = functools.partial(np.asarray, dtype=np.float64)
        return Reference(
            as_numpy(y), as_numpy(compared), flat_gradients(grads), jax.tree.map(as_numpy, final), weights
        )


# ----------------------------------------------------------------------------------------------------------
# The forms on the device: compiled once per shape, skipped when they do not fit in memory.


@functools.cache
def form_functions(name: str, form: str, chunk_size: int | None) -> tuple[Callable, Callable]:
    """``forward(inputs, state)`` and the value-and-gradients of the projection, of one form of a family."""
    family = get_family(name)

    def run(inputs: tuple, state: Any) -> tuple[Any, Any]:
        return family.wkv(*inputs, state=state, impl=form, chunk_size=chunk_size)

    return run, value_and_gradients(projection_loss(run, family.numerics.comparable_state))


_EXECUTABLES: dict[tuple[str, str], Any] = {}


def compile_within_memory(key: str, function: Callable, args: tuple) -> tuple[Any, str]:
    """The compiled ``function`` for ``args`` (cached by ``key`` and the argument shapes), or None and the
    reason when the program needs more than :data:`MEMORY_FRACTION` of the free device memory."""
    signature = (key, str(jax.tree.map(lambda x: (x.shape, str(x.dtype)), args)))
    if signature not in _EXECUTABLES:
        _EXECUTABLES[signature] = jax.jit(function).lower(*args).compile()
    executable = _EXECUTABLES[signature]
    need, free = needed_bytes(executable), free_bytes()
    if need is not None and free is not None and need > MEMORY_FRACTION * free:
        return None, f"skipped: needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    return executable, ""


def needed_bytes(executable: Any) -> int | None:
    """Device memory a compiled program allocates beyond its arguments (None if XLA does not say)."""
    try:
        analysis = executable.memory_analysis()
    except Exception:  # not implemented by every backend
        return None
    if analysis is None:
        return None
    return analysis.temp_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes


def free_bytes() -> int | None:
    """Free memory of the first device (None on backends without memory statistics, e.g. CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "bytes_limit" not in stats:
        return None
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0)


def median_ms(executable: Any, args: tuple, repeats: int) -> float:
    """Median milliseconds of ``executable(*args)`` over ``repeats`` calls after one warm-up call."""
    jax.block_until_ready(executable(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(executable(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def error_note(error: Exception) -> str:
    """``"error: Type: first line"``, short enough for a table cell."""
    lines = str(error).strip().splitlines()
    return f"error: {type(error).__name__}: {lines[0][:160] if lines else ''}"


# ----------------------------------------------------------------------------------------------------------
# Checking one form against the reference, and timing it.


def nan_row(label: dict[str, Any], family: Family, note: str, *, skipped: bool) -> numerics.Row:
    """A row without results: skipped (did not fit) or failed (raised), with the reason."""
    grads = {name: math.nan for name in numerics.gradient_names(family)}
    return numerics.Row(**label, y=math.nan, state=math.nan, gradients=grads, note=note, skipped=skipped)


def check_form(family: Family, form: str, case: tuple, reference: Reference, plan: Plan, label: dict) -> Any:
    """The :class:`rwkv_jax.numerics.Row` of one form on ``case = (inputs, state)`` against ``reference``."""
    _, check = form_functions(family.name, form, plan.chunk_size)
    weights = tuple(jnp.asarray(w, jnp.float32) for w in reference.weights)
    anchor = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), reference.final)
    args = (*case, weights, anchor)
    try:
        executable, note = compile_within_memory(f"{family.name}/{form}/check", check, args)
        if executable is None:
            return nan_row(label, family, note, skipped=True)
        (_, (y, _, compared)), grads = jax.device_get(executable(*args))
    except Exception as error:  # a form that cannot run here fails its check; the others go on
        return nan_row(label, family, error_note(error), skipped=False)
    names = numerics.gradient_names(family)
    gradients = {
        name: numerics.relative_error(g, g_ref)
        for name, g, g_ref in zip(names, flat_gradients(grads), reference.gradients, strict=True)
    }
    underflowing = tuple(
        name
        for name, g in zip(names, reference.gradients, strict=True)
        if np.linalg.norm(g) < numerics.NEGLIGIBLE_GRADIENT
    )
    note = f"grad of {', '.join(underflowing)} underflows float32 (not counted)" if underflowing else ""
    y_error = numerics.relative_error(y, reference.y)
    state_error = numerics.relative_error(compared, reference.state)
    return numerics.Row(
        **label, y=y_error, state=state_error, gradients=gradients, underflowing=underflowing, note=note
    )


class Timing(NamedTuple):
    """Median milliseconds of the forward and of forward+backward (NaN: not timed, see note)."""

    forward_ms: float
    backward_ms: float
    note: str
    shape: str = ""  # the timed sizes, "B=8 T=4096 H=32 N=64"


NOT_TIMED = Timing(math.nan, math.nan, "not timed")


def time_form(family: Family, form: str, case: tuple, weights: tuple, plan: Plan) -> Timing:
    """Times one form on ``case = (inputs, state)``: the form itself, and the projection's value and
    gradients (the same program as the check when the sizes are the same)."""
    run, check = form_functions(family.name, form, plan.chunk_size)
    inputs, state = case
    passes = {"fwd": (run, (inputs, state)), "fwd+bwd": (check, (inputs, state, weights, state))}
    times, notes = {}, []
    for name, (function, args) in passes.items():
        times[name] = math.nan
        try:
            key = f"{family.name}/{form}/{'forward' if name == 'fwd' else 'check'}"
            executable, note = compile_within_memory(key, function, args)
            if executable is None:
                notes.append(f"{name} {note}")
                continue
            times[name] = median_ms(executable, args, plan.repeats)
        except Exception as error:
            notes.append(f"{name} {error_note(error)}")
    return Timing(times["fwd"], times["fwd+bwd"], "; ".join(notes), shape_label(family, inputs, state))


# ----------------------------------------------------------------------------------------------------------
# One family: the check at moderate B in each regime, then the timing at model size.


@dataclasses.dataclass
class FormResult:
    """One form of one family at one dtype: its check rows (one per regime) and its timing."""

    family: str
    wkv: str
    form: str
    dtype: str
    rows: list[Any]
    timing: Timing = NOT_TIMED

    @property
    def kernel(self) -> bool:
        return self.form == KERNEL

    def verdict(self) -> str:
        """ "FAIL" if a checked row is outside the bounds, "skipped" if a row was not checked, else "pass"."""
        checked = [row for row in self.rows if not row.skipped]
        if any(not row.within_bounds() for row in checked):
            return "FAIL"
        return "pass" if checked and len(checked) == len(self.rows) else "skipped"


def as_dtype(inputs: tuple, dtype: str) -> tuple:
    """``inputs`` with the bfloat16 sequences cast to ``dtype`` (exact for float32)."""
    return tuple(x.astype(dtype) if x.dtype == jnp.bfloat16 else x for x in inputs)


def size_arguments(sizes: Sizes) -> dict[str, int]:
    return dict(batch=sizes.batch, length=sizes.length, heads=sizes.heads, size=sizes.size)


def shape_label(family: Family, inputs: tuple, state: Any) -> str:
    """``"B=2 T=4096 H=32 N=64"`` as the family's WKV table names the dimensions."""
    return " ".join(f"{letter}={size}" for letter, size in family.wkv.sizes(inputs, state).items())


def check_family(family: Family, plan: Plan, progress: Progress) -> dict[tuple[str, str], FormResult]:
    """Every form and dtype of ``family`` against the host reference in each regime, by (form, dtype)."""
    results = {
        (form, dtype): FormResult(family.name, family.wkv.name, form, dtype, [])
        for form in family.wkv.form_names
        for dtype in plan.dtypes
    }
    sizes = plan.sizes_for(family, plan.check)
    for index, regime in enumerate(plan.regimes_for(family)):
        seed = SEED + 10 * index
        inputs, state = numerics.make_inputs(
            family.name, **size_arguments(sizes), dtype="bfloat16", regime=regime, seed=seed
        )
        shape = shape_label(family, inputs, state)
        progress(f"{family.wkv.name} {regime}: float64 reference on the host CPU, {shape} ...")
        reference = host_reference(family, inputs, state, seed + 1)
        progress(f"{family.wkv.name} {regime}: reference done; checking the forms on the device")
        for (form, dtype), result in results.items():
            label = dict(
                family=family.name, wkv=family.wkv.name, form=form, dtype=dtype, length=sizes.length,
                regime=regime, shape=shape,
            )  # fmt: skip
            row = check_form(family, form, (as_dtype(inputs, dtype), state), reference, plan, label)
            result.rows.append(row)
            progress(f"  {form:<9} {dtype:<8} y {numerics.format_error(row.y)}  {summary(row)}")
    return results


def summary(row: Any) -> str:
    """The worst gradient and whether the row passes, for the progress lines."""
    if row.skipped:
        return row.note
    name, worst = row.worst_gradient()
    verdict = "ok" if row.within_bounds() else "OUT OF BOUNDS"
    return f"grad {numerics.format_error(worst)} ({name})  {verdict}  {row.note}".rstrip()


def time_family(family: Family, plan: Plan, results: dict, progress: Progress) -> None:
    """Times every form and dtype of ``family`` at the timing size; fills ``FormResult.timing``."""
    sizes = plan.sizes_for(family, plan.timing)
    for dtype in plan.dtypes:
        inputs, state = numerics.make_inputs(
            family.name, **size_arguments(sizes), dtype=dtype, regime=plan.regimes_for(family)[0], seed=SEED
        )
        run, _ = form_functions(family.name, family.wkv.form_names[0], plan.chunk_size)
        comparable = family.numerics.comparable_state
        weights = projection_weights(run, comparable, inputs, state, SEED + 1)
        weights = tuple(jnp.asarray(w, jnp.float32) for w in weights)
        progress(f"{family.wkv.name} {dtype}: timing at {shape_label(family, inputs, state)}")
        for form in family.wkv.form_names:
            timing = time_form(family, form, (inputs, state), weights, plan)
            results[form, dtype].timing = timing
            times = f"fwd {timing.forward_ms:9.2f} ms  fwd+bwd {timing.backward_ms:9.2f} ms"
            progress(f"  {form:<9} {dtype:<8} {times}  {timing.note}".rstrip())


# ----------------------------------------------------------------------------------------------------------
# Output: the table, the verdicts, the JSON.


def worst(rows: Sequence[Any], error_of: Callable[[Any], float]) -> tuple[float, Any]:
    """The largest error over the checked rows (NaN wins) and its row; ``(NaN, None)`` if none was checked."""
    checked = [row for row in rows if not row.skipped]
    if not checked:
        return math.nan, None
    row = max(checked, key=lambda r: math.inf if math.isnan(error_of(r)) else error_of(r))
    return error_of(row), row


def error_cells(result: FormResult) -> tuple[str, str, str]:
    """y, state and worst-gradient cells: the worst over the regimes ("–" when nothing was checked)."""
    y, row = worst(result.rows, lambda r: r.y)
    if row is None:
        return "–", "–", "–"
    state, _ = worst(result.rows, lambda r: r.state)
    grad, grad_row = worst(result.rows, lambda r: r.worst_gradient()[1])
    where = ", ".join(
        filter(None, (grad_row.worst_gradient()[0], grad_row.regime if len(result.rows) > 1 else ""))
    )
    return numerics.format_error(y), numerics.format_error(state), f"{numerics.format_error(grad)} ({where})"


def format_ms(ms: float) -> str:
    return "–" if math.isnan(ms) else f"{ms:.2f}"


def size_lines(results: Sequence[FormResult], families: Sequence[Family], plan: Plan) -> list[str]:
    """Per family: the sizes checked (regimes) and timed, as the rows recorded them."""
    lines = []
    for family in families:
        mine = [r for r in results if r.family == family.name]
        checked = next((row.shape for r in mine for row in r.rows), "?")
        timed = next((r.timing.shape for r in mine if r.timing.shape), "?")
        regimes = ", ".join(plan.regimes_for(family))
        lines.append(
            f"{family.wkv.name}: checked at {checked} (regimes {regimes}) against float64 on the host CPU; "
            f"timed at {timed}, median of {plan.repeats}"
        )
    return lines


def markdown_table(results: Sequence[FormResult]) -> str:
    """One row per (family, form, dtype): errors (worst over regimes), times, verdict, notes."""
    header = "| WKV | form | dtype | y | state | worst grad | fwd ms | fwd+bwd ms | verdict | note |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for result in results:
        notes = dict.fromkeys(row.note for row in result.rows if row.note)
        notes.update(dict.fromkeys([result.timing.note] if result.timing.note else []))
        form = f"{result.form} (kernel)" if result.kernel else result.form
        timing = result.timing
        cells = (
            result.wkv, form, result.dtype, *error_cells(result), format_ms(timing.forward_ms),
            format_ms(timing.backward_ms), result.verdict(), "; ".join(notes),
        )  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kernel_verdicts(results: Sequence[FormResult]) -> dict[str, str]:
    """Per kernel (WKV name): "pass" when every dtype passed, "FAIL" when one failed, else "skipped"."""
    per_kernel: dict[str, list[str]] = {}
    for result in results:
        if result.kernel:
            per_kernel.setdefault(result.wkv, []).append(result.verdict())
    return {
        wkv: "FAIL" if "FAIL" in verdicts else ("pass" if set(verdicts) == {"pass"} else "skipped")
        for wkv, verdicts in per_kernel.items()
    }


def platforms_to_set(verdicts: dict[str, str], platform: str) -> dict[str, frozenset[str]]:
    """``VERIFIED_KERNEL_PLATFORMS`` with ``platform`` added for every kernel (call when all passed)."""
    table = {wkv: frozenset(platforms) for wkv, platforms in forms.VERIFIED_KERNEL_PLATFORMS.items()}
    for wkv in verdicts:
        table[wkv] = table.get(wkv, frozenset()) | {platform}
    return dict(sorted(table.items()))


def final_line(verdicts: dict[str, str], platform: str, interpret: bool) -> str:
    """What to do with ``VERIFIED_KERNEL_PLATFORMS`` after this run."""
    if interpret:
        return f"VERIFIED_KERNEL_PLATFORMS: leave as it is (Pallas interpreter on {platform}: no hardware)"
    failed = [f"{wkv} {verdict}" for wkv, verdict in verdicts.items() if verdict != "pass"]
    if failed or not verdicts:
        return f"VERIFIED_KERNEL_PLATFORMS: leave as it is; not verified on {platform}: {', '.join(failed)}"
    return (
        f"VERIFIED_KERNEL_PLATFORMS: every kernel passed on {platform}; set it in rwkv_jax/wkv/forms.py to "
        f"{format_platforms(platforms_to_set(verdicts, platform))}"
    )


def format_platforms(table: dict[str, frozenset[str]]) -> str:
    """``{"WKV-4": frozenset({"gpu"}), ...}`` as Python source."""
    entries = []
    for wkv, platforms in table.items():
        names = ", ".join(f'"{platform}"' for platform in sorted(platforms))
        entries.append(f'"{wkv}": frozenset({{{names}}})')
    return "{" + ", ".join(entries) + "}"


def verdict_lines(results: Sequence[FormResult], families: Sequence[Family], platform: str, interpret: bool):
    """One line per kernel, AUTO's form on GPU/TPU per family, and the final line."""
    lines = []
    verdicts = kernel_verdicts(results)
    for wkv, verdict in verdicts.items():
        per_dtype = ", ".join(f"{r.dtype} {r.verdict()}" for r in results if r.kernel and r.wkv == wkv)
        lines.append(f"kernel {wkv}: {verdict} on {platform} ({per_dtype})")
    for family in families:
        auto = family.wkv.auto_accelerated.value
        per_dtype = ", ".join(
            f"{r.dtype} {r.verdict()}" for r in results if r.wkv == family.wkv.name and r.form == auto
        )
        lines.append(f"AUTO's pure-JAX form on GPU/TPU for {family.wkv.name}, {auto}: {per_dtype}")
    lines.append(final_line(verdicts, platform, interpret))
    return lines


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as the strings "NaN" / "Inf" (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return numerics.format_error(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def form_record(result: FormResult) -> dict[str, Any]:
    """One form's results for the JSON: its verdict, times and every row (per regime, every gradient)."""
    return dict(
        family=result.family, wkv=result.wkv, form=result.form, dtype=result.dtype, kernel=result.kernel,
        verdict=result.verdict(), forward_ms=result.timing.forward_ms,
        forward_backward_ms=result.timing.backward_ms, timing_note=result.timing.note,
        timing_shape=result.timing.shape,
        rows=[row.flat() for row in result.rows],
    )  # fmt: skip


def write_json(path: pathlib.Path, results: Sequence[FormResult], header: dict[str, Any], lines: list[str]):
    """Every row (per regime), the timings, the verdicts and the run's settings as JSON."""
    forms_out = [form_record(result) for result in results]
    document = {**header, "forms": forms_out, "kernels": kernel_verdicts(results), "verdict_lines": lines}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(document), indent=1) + "\n")


# ----------------------------------------------------------------------------------------------------------
# Entry point.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="check at B=1, T=1024, one regime; 3 repeats")
    parser.add_argument(
        "--small", action="store_true", help="tiny shapes (B=1, T=40, H=2, N=16), chunk 16, float32 only"
    )
    parser.add_argument(
        "--interpret", action="store_true", help="run on the CPU, kernels in the Pallas interpreter"
    )
    parser.add_argument("--families", default="", help="comma-separated (default: those with a kernel)")
    parser.add_argument(
        "--dtypes", default="", help="comma-separated (default: float32,bfloat16; --small: float32)"
    )
    parser.add_argument("--repeats", type=int, default=0, help="timed calls per form (default 5 / 3 / 1)")
    parser.add_argument("--chunk-size", type=int, help="chunk of the chunked and Pallas forms")
    parser.add_argument(
        "--matmul-precision", default="default", choices=("default", "high", "highest"),
        help="jax_default_matmul_precision for the pure-JAX forms (default: JAX's, as the models run)",
    )  # fmt: skip
    parser.add_argument("--json", type=pathlib.Path, help="write every result to this JSON file")
    args = parser.parse_args(argv)
    default_dtypes = "float32" if args.small else ",".join(numerics.DTYPES)
    args.dtypes = tuple(d for d in (args.dtypes or default_dtypes).split(",") if d)
    for dtype in args.dtypes:
        if dtype not in numerics.DTYPES:
            parser.error(f"--dtypes: unknown {dtype!r}; expected some of {', '.join(numerics.DTYPES)}")
    if args.repeats < 0:
        parser.error("--repeats must be >= 0")
    return args


def selected_families(names: str) -> list[Family]:
    """The families named (comma-separated), or every swept family whose WKV table has a kernel."""
    if names:
        return [numerics.swept_family(name) for name in names.split(",") if name]
    return [family for family in numerics.swept_families() if KERNEL in family.wkv.form_names]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.interpret:
        jax.config.update("jax_platforms", "cpu")
    platform = jax.default_backend()
    if platform == "cpu" and not args.interpret:
        print(
            "check_device: no GPU or TPU here; --interpret runs the kernels in the interpreter",
            file=sys.stderr,
        )
        return 2
    if args.matmul_precision != "default":
        jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    plan, progress, families = make_plan(args), Progress(), selected_families(args.families)
    device = jax.devices()[0]
    kernels = "Pallas interpreter (TPU layout)" if args.interpret else f"compiled for target {platform}"
    progress(
        f"check_device: {platform} ({device.device_kind}), jax {jax.__version__}, {plan.mode} run, kernels "
        f"{kernels}, matmul precision {args.matmul_precision}, chunk {plan.chunk_size or 'default'}"
    )
    results: list[FormResult] = []
    for family in families:
        by_form = check_family(family, plan, progress)
        time_family(family, plan, by_form, progress)
        results.extend(by_form.values())
    print()
    for line in size_lines(results, families, plan):
        print(line)
    print()
    print(markdown_table(results))
    print()
    lines = verdict_lines(results, families, platform, args.interpret)
    print("\n".join(lines))
    print(f"total {progress.elapsed():.0f} s", flush=True)
    if args.json:
        header = dict(
            platform=platform, device_kind=device.device_kind, jax_version=jax.__version__, mode=plan.mode,
            interpret=args.interpret, matmul_precision=args.matmul_precision, chunk_size=plan.chunk_size,
            dtypes=plan.dtypes, repeats=plan.repeats, sizes=size_lines(results, families, plan),
            elapsed_s=progress.elapsed(),
        )  # fmt: skip
        write_json(args.json, results, header, lines)
    verdicts = kernel_verdicts(results)
    return 0 if verdicts and set(verdicts.values()) == {"pass"} else 1


if __name__ == "__main__":
    sys.exit(main())
