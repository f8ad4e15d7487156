"""Builds the package's C++ XLA FFI kernels on first use, with the host's C++ compiler, into a per-user cache.

A kernel is compiled for the CPU it runs on (``-march=native``), so the library is keyed by everything that
changes the machine code: the source, the compiler's version, the flags, jaxlib's version (its FFI headers)
and the CPU's feature flags. The compile writes to a temporary name in the cache folder and renames it into
place, so a concurrent process or an interrupted build never loads half a file.

Environment:
  ``RWKV_JAX_NATIVE=0``: never build or load (the callers fall back to plain XLA).
  ``RWKV_JAX_CACHE_DIR``: the cache folder (default ``$XDG_CACHE_HOME/rwkv_jax``, else ``~/.cache/rwkv_jax``).
  ``CXX``: the compiler (default the first of ``c++``, ``g++``, ``clang++`` on the ``PATH``).
"""

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jaxlib

SOURCES = pathlib.Path(__file__).parent
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 300

log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The kernel could not be built or loaded here (no compiler, a failed compile, an unwritable cache)."""


def cache_dir() -> pathlib.Path:
    """The folder built libraries are kept in (see the module docstring)."""
    if os.environ.get("RWKV_JAX_CACHE_DIR"):
        return pathlib.Path(os.environ["RWKV_JAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "rwkv_jax"


def compiler() -> str:
    """The C++ compiler's path; raises BuildError when there is none."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        path = name and shutil.which(name)
        if path:
            return path
    raise BuildError("no C++ compiler found (set CXX, or install g++ or clang++)")


def cpu_flags() -> str:
    """The CPU's feature flags (``-march=native`` compiles for them), or the processor's name off Linux."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_path(name: str, cxx: str) -> pathlib.Path:
    """Where the library built from ``name``.cc with ``cxx`` for this CPU lives in the cache."""
    source = (SOURCES / f"{name}.cc").read_bytes()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256()
    for part in (source, version.encode(), " ".join(FLAGS).encode(), jaxlib.__version__.encode()):
        key.update(part)
        key.update(b"\0")
    key.update(cpu_flags().encode())
    return cache_dir() / f"{name}-{key.hexdigest()[:20]}.so"


def _compile(name: str, cxx: str, target: pathlib.Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    command = [cxx, *FLAGS, "-isystem", jax.ffi.include_dir(), str(SOURCES / f"{name}.cc"), "-o", temporary]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            raise BuildError(f"compiling {name}.cc failed ({' '.join(command)}):\n{result.stderr[-4000:]}")
        os.replace(temporary, target)
    except subprocess.TimeoutExpired as error:
        raise BuildError(f"compiling {name}.cc took more than {COMPILE_TIMEOUT_S} s") from error
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@functools.cache
def load(name: str) -> ctypes.CDLL:
    """The library built from ``rwkv_jax/native/<name>.cc``, compiled first if the cache lacks it.

    Raises BuildError (with the reason) when it is disabled, cannot be compiled or cannot be loaded.
    """
    if os.environ.get("RWKV_JAX_NATIVE", "1") == "0":
        raise BuildError("native kernels are disabled (RWKV_JAX_NATIVE=0)")
    if not (SOURCES / f"{name}.cc").exists():
        raise BuildError(f"the kernel's source {SOURCES / f'{name}.cc'} is missing from this installation")
    cxx = compiler()
    path = library_path(name, cxx)
    if not path.exists():
        log.info("compiling %s.cc into %s", name, path)
        try:
            _compile(name, cxx, path)
        except OSError as error:
            raise BuildError(f"could not write {path}: {error}") from error
    try:
        return ctypes.CDLL(str(path))
    except OSError as error:
        raise BuildError(f"could not load {path}: {error}") from error
