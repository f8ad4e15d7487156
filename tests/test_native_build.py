"""rwkv_jax.native.build: compiles into the cache under a key of what changes the machine code, writes
nothing half-done when a compile fails, and says why it cannot build."""

import shutil

import pytest

from rwkv_jax.native import build

TINY = 'extern "C" int Answer() { return 42; }\n'


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """A source folder and an empty cache of the test's own (the real kernel's cache is left alone)."""
    if shutil.which("c++") is None and shutil.which("g++") is None and shutil.which("clang++") is None:
        pytest.skip("needs a C++ compiler")
    folder = tmp_path / "sources"
    folder.mkdir()
    monkeypatch.setattr(build, "SOURCES", folder)
    monkeypatch.setenv("RWKV_JAX_CACHE_DIR", str(tmp_path / "cache"))
    build.load.cache_clear()
    yield folder
    build.load.cache_clear()


def test_load_compiles_once_into_the_cache_under_a_source_key(sources):
    (sources / "tiny.cc").write_text(TINY)
    assert build.load("tiny").Answer() == 42
    built = list(build.cache_dir().iterdir())
    assert [path.name for path in built] == [build.library_path("tiny", build.compiler()).name]
    modified = built[0].stat().st_mtime_ns
    build.load.cache_clear()
    build.load("tiny")
    assert built[0].stat().st_mtime_ns == modified  # loaded from the cache, not compiled again
    (sources / "tiny.cc").write_text(TINY.replace("42", "43"))
    assert build.library_path("tiny", build.compiler()) != built[0]  # an edited source gets its own file


def test_failed_compile_raises_with_the_compiler_message_and_leaves_no_file(sources):
    (sources / "broken.cc").write_text("this is not C++\n")
    with pytest.raises(build.BuildError, match=r"compiling broken\.cc failed"):
        build.load("broken")
    assert list(build.cache_dir().iterdir()) == []  # no library, no temporary file


def test_disabled_missing_source_and_missing_compiler_say_why(sources, monkeypatch):
    (sources / "tiny.cc").write_text(TINY)
    monkeypatch.setenv("RWKV_JAX_NATIVE", "0")
    with pytest.raises(build.BuildError, match="RWKV_JAX_NATIVE=0"):
        build.load("tiny")
    monkeypatch.setenv("RWKV_JAX_NATIVE", "1")
    with pytest.raises(build.BuildError, match="missing from this installation"):
        build.load("absent")
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(build.BuildError, match="no C\\+\\+ compiler"):
        build.load("tiny")
