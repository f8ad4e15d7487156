"""Shared test setup: float64 available for references, and the ../shared fixtures locator."""

import os
import pathlib

import jax
import pytest

# References run in float64; everything else states its dtype explicitly.
jax.config.update("jax_enable_x64", True)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DIR = pathlib.Path(os.environ.get("RWKV_JAX_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def tiny_rwkv_dir() -> pathlib.Path:
    """The trained tiny models of ../shared/fixtures/tiny-rwkv; skips when ../shared is absent."""
    path = SHARED_DIR / "fixtures" / "tiny-rwkv"
    if not path.is_dir():
        pytest.skip(f"needs the shared fixtures at {path} (set RWKV_JAX_SHARED to the shared/ folder)")
    return path


@pytest.fixture
def blinkdl_rwkv_model(monkeypatch):
    """BlinkDL's ``rwkv.model`` (the official inference package) on the CPU, without its TorchScript JIT.

    The package reads RWKV_JIT_ON and RWKV_CUDA_ON when it is first imported, so both are set before.
    """
    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    reason = "BlinkDL's rwkv package is not installed (pip install rwkv)"
    return pytest.importorskip("rwkv.model", reason=reason)
