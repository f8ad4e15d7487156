"""What ``Impl.AUTO`` resolves to on each backend: never an unverified Pallas kernel on GPU or TPU.

``jax.default_backend`` is monkeypatched to "gpu" / "tpu" (no hardware needed: resolution only reads it), and
:data:`rwkv_jax.wkv.forms.VERIFIED_KERNEL_PLATFORMS` is monkeypatched to mark a platform as verified.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import pytest

import rwkv_jax
from rwkv_jax import decoding
from rwkv_jax.models.family import families
from rwkv_jax.wkv import forms
from rwkv_jax.wkv.forms import WKVForms
from rwkv_jax.wkv.impl import Impl

ACCELERATORS = ("gpu", "tpu")
TABLES: tuple[WKVForms, ...] = tuple(family.wkv for family in families() if family.wkv is not None)
TABLE_IDS = [table.name for table in TABLES]


def use_backend(monkeypatch: pytest.MonkeyPatch, platform: str) -> None:
    """Makes ``jax.default_backend()`` answer ``platform`` for the rest of the test."""
    monkeypatch.setattr(jax, "default_backend", lambda: platform)


def verify(monkeypatch: pytest.MonkeyPatch, table: WKVForms, *platforms: str) -> None:
    """Marks ``table``'s kernel as verified on ``platforms`` for the rest of the test."""
    monkeypatch.setitem(forms.VERIFIED_KERNEL_PLATFORMS, table.name, frozenset(platforms))


def test_every_registered_family_has_a_wkv_table_and_no_kernel_is_verified_yet():
    assert {table.name for table in TABLES} >= {"WKV-4", "WKV-6", "WKV-7"}
    assert forms.VERIFIED_KERNEL_PLATFORMS == {}


@pytest.mark.parametrize("platform", ACCELERATORS)
@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_auto_on_an_accelerator_is_the_pure_jax_form(monkeypatch, table, platform):
    use_backend(monkeypatch, platform)
    resolved = table.resolve(Impl.AUTO, 4096)
    assert resolved is table.auto_accelerated
    assert resolved is not Impl.PALLAS
    assert resolved is (Impl.SCAN if table.name == "WKV-4" else Impl.CHUNKED)
    assert table.resolve("auto", 2) is resolved


@pytest.mark.parametrize("platform", ACCELERATORS)
@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_auto_picks_the_kernel_only_on_a_verified_platform(monkeypatch, table, platform):
    use_backend(monkeypatch, platform)
    other = next(p for p in ACCELERATORS if p != platform)
    verify(monkeypatch, table, other)
    assert table.resolve(Impl.AUTO, 64) is table.auto_accelerated  # verified elsewhere only
    verify(monkeypatch, table, platform)
    expected = Impl.PALLAS if Impl.PALLAS in table.forms else table.auto_accelerated
    assert table.resolve(Impl.AUTO, 64) is expected


@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_another_family_verified_does_not_change_auto(monkeypatch, table):
    use_backend(monkeypatch, "gpu")
    for other in TABLES:
        if other.name != table.name:
            verify(monkeypatch, other, *ACCELERATORS)
    assert table.resolve(Impl.AUTO, 64) is table.auto_accelerated


@pytest.mark.parametrize("verified", [False, True], ids=["unverified", "verified"])
@pytest.mark.parametrize("platform", ("cpu", *ACCELERATORS))
@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_auto_for_one_token_is_recurrent_everywhere(monkeypatch, table, platform, verified):
    use_backend(monkeypatch, platform)
    if verified:
        verify(monkeypatch, table, platform)
    assert table.resolve(Impl.AUTO, 1) is Impl.RECURRENT


@pytest.mark.parametrize("table", TABLES, ids=TABLE_IDS)
def test_auto_on_cpu_is_the_cpu_form_even_if_cpu_were_listed(monkeypatch, table):
    use_backend(monkeypatch, "cpu")
    verify(monkeypatch, table, "cpu")
    assert table.resolve(Impl.AUTO, 64) is table.auto_cpu


@pytest.mark.parametrize("platform", ACCELERATORS)
@pytest.mark.parametrize("table", [t for t in TABLES if Impl.PALLAS in t.forms], ids=lambda t: t.name)
def test_pallas_by_name_is_an_explicit_opt_in_on_any_platform(monkeypatch, table, platform):
    use_backend(monkeypatch, platform)
    assert table.resolve(Impl.PALLAS, 64) is Impl.PALLAS
    assert table.resolve("pallas", 1) is Impl.PALLAS  # asked for by name: even for one token


def recording(table: WKVForms, monkeypatch: pytest.MonkeyPatch) -> list[Impl]:
    """Wraps every form of ``table`` so that each call appends its :class:`Impl` to the returned list."""
    calls: list[Impl] = []

    def wrap(impl: Impl, form: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            calls.append(impl)
            return form(*args, **kwargs)

        return run

    for impl, form in list(table.forms.items()):
        monkeypatch.setitem(table.forms, impl, wrap(impl, form))
    return calls


@pytest.mark.parametrize("platform", ACCELERATORS)
def test_a_model_with_wkv_impl_auto_runs_the_chunked_form_on_an_accelerator(monkeypatch, platform):
    model = rwkv_jax.get_preset("finch-tiny").build()
    assert model.config.wkv_impl is Impl.AUTO
    table = rwkv_jax.get_family("rwkv6").wkv
    calls = recording(table, monkeypatch)
    use_backend(monkeypatch, platform)
    tokens = jnp.arange(2 * 5, dtype=jnp.int32).reshape(2, 5) % model.config.vocab_size
    # The jitted call traces once per model structure and shape: a trace left by an earlier test in this
    # process (another platform's case) would leave nothing to record, so the test starts without one.
    decoding.compiled_step.cache_clear()
    logits, state = model(tokens)
    assert calls == [Impl.CHUNKED] * model.config.n_layer
    assert bool(jnp.isfinite(logits).all())
    calls.clear()
    model(tokens[:, :1], state)  # decoding one token
    assert calls == [Impl.RECURRENT] * model.config.n_layer
