"""Packed documents (``starts``): every form that takes the mask gives, per document, the outputs and
gradients of running that document alone from the call's initial state; the other forms refuse it.

Each row packs documents that start at t = 0 (flagged or not), at t = 16 (a chunk boundary of chunk size
16), mid-chunk, and one-token documents at the start and the end of a row. The expectation is the float64
reference run on each document alone; the loss is a random projection of y and of the final state, so every
input's gradient (and the initial state's, which every document reads) is compared.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwkv_jax.models.family import families
from rwkv_jax.numerics import relative_error
from rwkv_jax.wkv.forms import WKVForms
from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.numerics_case import NumericsCase, Shape, to_float64

FAMILIES = {family.wkv.name: family for family in families() if family.wkv is not None}
LENGTH = 24
CHUNK_SIZE = 16  # of the chunked and Pallas forms (the kernels' smallest)
# Row 0: t = 0 flagged, mid-chunk (13) and a chunk boundary (16); row 1: t = 0 not flagged (the row starts
# from the initial state anyway), a one-token document at t = 0 and one at the end.
DOCUMENT_STARTS = ((0, 13, 16), (1, 11, LENGTH - 1))
# The extreme decays of each family's numerics regimes (WKV-7's model never decays below e^-0.607 a step).
EXTREME_REGIMES = {"WKV-4": ("near0", "near1"), "WKV-6": ("near0", "near1"), "WKV-7": ("strongest", "near1")}
# The WKV-4 kernel in its default layout on CPU (TPU: channels padded to 128 lanes) took 22 s here in
# interpret mode; tests/pallas/test_wkv4_kernel.py holds it (GPU layout) to the same float64 reference with
# starts.
SLOW_IN_INTERPRET = {("WKV-4", "pallas")}
CASES = [
    (name, form, CHUNK_SIZE)
    for name, family in FAMILIES.items()
    for form in sorted(i.value for i in family.wkv.takes_starts)
    if (name, form) not in SLOW_IN_INTERPRET
] + [("WKV-7", "chunked", 32)]  # two blocks of 16 in a chunk: the starts at 13 and 16 fall in one chunk


def starts_mask() -> jax.Array:
    mask = np.zeros((len(DOCUMENT_STARTS), LENGTH), bool)
    for row, positions in enumerate(DOCUMENT_STARTS):
        mask[row, list(positions)] = True
    return jnp.asarray(mask)


def documents(row: int) -> list[tuple[int, int]]:
    """``(begin, end)`` of each document of ``row`` (a row's first document begins at 0)."""
    edges = sorted({0, *DOCUMENT_STARTS[row], LENGTH})
    return list(itertools.pairwise(edges))


def piece(table: WKVForms, inputs: tuple, row: int, begin: int, end: int) -> tuple:
    """The inputs of tokens ``[begin, end)`` of ``row`` (inputs without a time axis unchanged)."""
    sliced = []
    for (_, letters), x in zip(table.inputs, inputs, strict=True):
        if "T" in letters:
            x = jax.lax.slice_in_dim(x, begin, end, axis=letters.index("T"))
        if "B" in letters:
            x = jax.lax.slice_in_dim(x, row, row + 1, axis=letters.index("B"))
        sliced.append(x)
    return tuple(sliced)


def row_of(state, row: int):
    return jax.tree.map(lambda x: x[row : row + 1], state)


def make_case(name: str, regime: str, seed: int):
    family = FAMILIES[name]
    case: NumericsCase = family.numerics
    rng = np.random.default_rng(seed)
    shape = Shape(len(DOCUMENT_STARTS), LENGTH, heads=1, size=8)  # a head size the kernels take
    inputs, state = case.make_inputs(rng, shape, "float32", regime)
    return family.wkv, case, inputs, state


def make_extreme_case(name: str, seed: int):
    """Inputs whose first half of channels (the last axis of ``w_log``) decay at one extreme, the other half
    at the other (the regimes differ only in ``w_log``)."""
    near_zero, near_one = EXTREME_REGIMES[name]
    table, case, inputs, state = make_case(name, near_zero, seed)
    w_log_near_one = make_case(name, near_one, seed)[2][table.input_names.index("w_log")]
    channels = np.arange(w_log_near_one.shape[-1]) < w_log_near_one.shape[-1] // 2
    mixed = tuple(
        jnp.where(channels, x, w_log_near_one) if input_name == "w_log" else x
        for input_name, x in zip(table.input_names, inputs, strict=True)
    )
    return table, case, mixed, state


def loss_and_outputs(table: WKVForms, case: NumericsCase, run, directions: dict, at=None):
    """``(inputs, state) -> (loss, (y, final))`` for ``run(inputs, state) -> (y, final)``: random projections
    of y and of the final state (``case.comparable_state`` at the final state ``at``, or at the call's own
    final state held constant). ``directions`` holds the projections' directions: drawn by the first
    function made with it, shared by the others."""

    def loss(inputs, state):
        y, final = run(inputs, state)
        held = jax.lax.stop_gradient(final) if at is None else at
        comparable = case.comparable_state(final, held)
        rng = np.random.default_rng(len(directions))
        y_dir = directions.setdefault("y", rng.normal(size=y.shape))
        s_dir = directions.setdefault("s", rng.normal(size=comparable.shape))
        return jnp.sum(y * y_dir.astype(y.dtype)) + jnp.sum(comparable * s_dir.astype(comparable.dtype)), (
            y,
            final,
        )

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def assert_gradients_close(got, want, bound: float) -> None:
    """Every leaf of ``got`` against ``want`` by relative error; an expected gradient below float32's range
    (a decay's gradient behind a decay of e^-148) must come out as (near) zero."""
    expected = dict(jax.tree_util.tree_leaves_with_path(want))
    for path, leaf in jax.tree_util.tree_leaves_with_path(got):
        name, reference = jax.tree_util.keystr(path), expected[path]
        if float(jnp.linalg.norm(reference)) < 1e-30:
            assert float(jnp.linalg.norm(leaf)) < 1e-30, name
        else:
            assert relative_error(leaf, reference) < bound, name


def packed_reference(table: WKVForms):
    return lambda inputs, state: table.reference(*inputs, state, starts=starts_mask())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_reference_with_starts_equals_each_document_alone(name):
    """The float64 reference on the packed rows against the float64 reference on each document alone."""
    table, case, inputs, state = make_case(name, "typical", seed=2)
    inputs, state, directions = to_float64(inputs), to_float64(state), {}

    def alone(inputs, state):
        ys, finals = [], []
        for row in range(len(DOCUMENT_STARTS)):
            pieces = [table.reference(*piece(table, inputs, row, *span), row_of(state, row)) for span in
                      documents(row)]  # fmt: skip
            ys.append(jnp.concatenate([y for y, _ in pieces], axis=1))
            finals.append(pieces[-1][1])
        return jnp.concatenate(ys), jax.tree.map(lambda *rows: jnp.concatenate(rows), *finals)

    (loss, (y, final)), grads = loss_and_outputs(table, case, packed_reference(table), directions)(
        inputs, state
    )
    (loss_alone, (y_alone, _)), grads_alone = loss_and_outputs(table, case, alone, directions, at=final)(
        inputs, state
    )
    # Measured (float64, XLA:CPU): y <= 1.0e-17, loss <= 1.9e-15, gradients <= 4.1e-16 over the families.
    assert relative_error(y, y_alone) < 1e-16
    assert abs(loss - loss_alone) < 2e-14 * abs(loss_alone)
    assert_gradients_close(grads, grads_alone, 4e-15)


@pytest.mark.parametrize(("name", "form", "chunk_size"), CASES)
def test_packed_forms_give_the_outputs_and_gradients_of_the_reference(name, form, chunk_size):
    """Each form with ``starts`` (float32) against the float64 reference with ``starts`` (which equals each
    document alone, above), half the channels at each extreme decay."""
    table, case, inputs, state = make_extreme_case(name, seed=len(name) + len(form))
    directions = {}
    reference = loss_and_outputs(table, case, packed_reference(table), directions)
    (_, (y_ref, final_ref)), grads_ref = reference(to_float64(inputs), to_float64(state))

    def packed(inputs, state):
        return table(*inputs, state=state, impl=form, chunk_size=chunk_size, starts=starts_mask())

    (_, (y, final)), grads = loss_and_outputs(table, case, packed, directions, at=final_ref)(inputs, state)
    # Measured (float32 against float64, XLA:CPU): y <= 1.1e-7, final state <= 7.3e-8, gradients <= 3.8e-7
    # over every family and form (chunked WKV-7: 9.2e-8, 7.3e-8, 2.1e-7; the issue asks 1e-5).
    assert relative_error(y, y_ref) < 7e-7
    assert (
        relative_error(case.comparable_state(final, final_ref), case.comparable_state(final_ref, final_ref))
        < 7e-7
    )
    assert_gradients_close(grads, grads_ref, 2e-6)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_forms_without_the_mask_refuse_it_auto_picks_one_and_no_start_changes_nothing(name):
    table, _, inputs, state = make_case(name, EXTREME_REGIMES[name][1], seed=0)
    for impl in set(table.forms) - table.takes_starts:
        with pytest.raises(
            ValueError, match=r"does not take a document-start mask.*the forms that do: recurrent, scan"
        ):
            table(*inputs, state=state, impl=impl, starts=starts_mask())
    assert table.resolve(Impl.AUTO, LENGTH, with_starts=True) in table.takes_starts
    y_unmasked, _ = table(*inputs, state=state, impl=Impl.RECURRENT)
    y_no_starts, _ = table(*inputs, state=state, impl=Impl.RECURRENT, starts=jnp.zeros((2, LENGTH), bool))
    assert relative_error(y_no_starts, y_unmasked) == 0.0
    with pytest.raises(ValueError, match=r"starts must be a bool array \[B, T\]"):
        table(*inputs, state=state, impl=Impl.RECURRENT, starts=starts_mask()[:, 1:])
    with pytest.raises(ValueError, match=r"starts must be a bool array \[B, T\]"):
        table(*inputs, state=state, impl=Impl.RECURRENT, starts=starts_mask().astype(jnp.int32))
