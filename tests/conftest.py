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
        pytest.skip(f"needs the project's shared fixtures at {path} (set RWKV_JAX_SHARED to its shared/ folder)")
    return path
