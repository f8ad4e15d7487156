"""Shared test setup: float64 available for references, one compilation cache, the ../shared fixtures
locator, skip_or_fail."""

import importlib
import os
import pathlib
import shutil
import tempfile
from types import ModuleType
from typing import NoReturn

# One persistent compilation cache for the whole run: many tests build the same programs (a tiny model per
# family, again and again; training restarted in subprocesses; the notebooks' kernels). Set in the
# environment before JAX is imported, here in the process that starts the xdist workers, so that the
# workers, their subprocesses and notebook kernels all share it. A size limit turns on JAX's file lock (the
# workers write concurrently). A cache the caller set is kept; one made here is removed at the end.
CACHE_SETTINGS = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(4 << 30),
}
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rwkv_jax_test_cache-")
    os.environ["RWKV_JAX_TEST_CACHE_OWNER"] = str(os.getpid())
for _name, _value in CACHE_SETTINGS.items():
    os.environ.setdefault(_name, _value)

# Tests compile hundreds of small programs and run each a few times, so compiling fast matters more than the
# code's speed: LLVM's optimisation off (level 0: tests/models/test_family_contract.py 44 s instead of 73 s,
# tests/wkv/test_v7.py with tests/training/test_loop.py 85 s instead of 141 s), and XLA:CPU's elemental
# emitters instead of its MLIR fusion emitters (3x faster compiles: tests/wkv/test_v6.py, test_v7.py,
# tests/models/test_ablation_switches.py and tests/test_generation.py 217 s -> 76 s with -n 2, one run each,
# 2026-12-06). Inherited by the workers, their subprocesses and the notebook kernels; an option the caller
# set is kept.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
_callers = os.environ.get("XLA_FLAGS", "")
_ours = [flag for flag in TEST_XLA_FLAGS.split() if flag.split("=")[0] not in _callers]
os.environ["XLA_FLAGS"] = " ".join([_callers, *_ours]).strip()

import jax  # noqa: E402  (after the cache settings: JAX reads them at import)
import pytest  # noqa: E402

# References run in float64; everything else states its dtype explicitly.
jax.config.update("jax_enable_x64", True)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Removes the compilation cache this process made (the xdist workers leave it to their controller)."""
    if os.environ.get("RWKV_JAX_TEST_CACHE_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs the tests marked ``slow`` first, in their collected order (a stable sort).

    pyproject.toml has xdist share the work by stealing (``--dist worksteal``): a worker that runs out takes
    half of the other's remaining queue, from its end. With the long tests at the front, what is left to
    share at the end is short, so neither worker sits idle while the other finishes a minute-long test (the
    suite's wall time is what the CI limit counts), and a module's tests stay together at the front, so a
    module-scoped fixture is built once.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DIR = pathlib.Path(os.environ.get("RWKV_JAX_SHARED", REPO_ROOT.parent / "shared"))


def in_ci() -> bool:
    """True when the environment variable CI is "true" (GitHub Actions, GitLab CI and others set it)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def skip_or_fail(reason: str) -> NoReturn:
    """Skips the calling test with ``reason``; in CI (``CI=true``) fails it instead.

    For tests that need something outside the repository (../shared, an optional tool): on a laptop a
    missing fixture is a skip with the reason, in CI it means the check did not run, so it must not pass.
    """
    if in_ci():
        pytest.fail(f"CI=true, so this test may not skip: {reason}", pytrace=False)
    pytest.skip(reason)


def shared_path(*parts: str) -> pathlib.Path:
    """``SHARED_DIR / parts``; skip_or_fail when it does not exist."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        skip_or_fail(f"needs the shared fixtures at {path} (set RWKV_JAX_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def tiny_rwkv_dir() -> pathlib.Path:
    """The trained tiny models of ../shared/fixtures/tiny-rwkv; skip_or_fail when ../shared is absent."""
    return shared_path("fixtures", "tiny-rwkv")


def load_experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` as a module (``experiments`` is a namespace package under the repo root)."""
    return importlib.import_module(f"experiments.{name}")


def import_or_skip(module: str, reason: str) -> ModuleType:
    """``importlib.import_module(module)``; :func:`skip_or_fail` with ``reason`` when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        skip_or_fail(reason)


@pytest.fixture
def blinkdl_rwkv_model(monkeypatch):
    """BlinkDL's ``rwkv.model`` (the official inference package) on the CPU, without its TorchScript JIT.

    The package reads RWKV_JIT_ON and RWKV_CUDA_ON when it is first imported, so both are set before.
    """
    monkeypatch.setenv("RWKV_JIT_ON", "0")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    return import_or_skip("rwkv.model", "BlinkDL's rwkv package is not installed (pip install rwkv)")
