"""Loading an official checkpoint holds one copy of the weights: parameters are copies, never aliases of
the memory-mapped file, and the file's pages are released once copied."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

import rwkv_jax
from rwkv_jax.checkpoint.transfer import release_mapped
from rwkv_jax.host_memory import process_status_kib, put_donatable


def test_loaded_parameters_do_not_follow_the_file_overwritten_in_place(tmp_path):
    config = rwkv_jax.RWKV6Config(vocab_size=64, n_layer=2, n_embd=32, head_size=16, init="plain")
    path = tmp_path / "finch.pth"
    rwkv_jax.save_official(rwkv_jax.RWKV6(config, rngs=nnx.Rngs(0)), path)
    model = rwkv_jax.load_official(path)
    before = [np.array(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]
    with open(path, "r+b") as f:  # in place, as a careless writer would: an aliased parameter would see it
        f.write(b"\0" * os.path.getsize(path))
    after = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, after, strict=True))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc/self/status")
def test_release_mapped_drops_the_resident_pages_and_the_array_stays_readable(tmp_path):
    path = tmp_path / "weights.bin"
    values = np.arange(8 * 2**20, dtype=np.float32)  # 32 MiB
    values.tofile(path)
    mapped = np.memmap(path, np.float32, mode="c").view(np.ndarray)[1:]  # edges off page boundaries
    assert mapped.sum(dtype=np.float64) == values[1:].sum(dtype=np.float64)  # every page read: resident
    resident = process_status_kib("RssFile")
    release_mapped(mapped)
    assert resident - process_status_kib("RssFile") > 30 * 1024  # measured 32768 KiB (the 32 MiB) released
    assert np.array_equal(mapped, values[1:])  # read from the file again


def test_loaded_parameters_placed_for_training_are_donated_by_the_step(tmp_path):
    """The loader's arrays share numpy's memory, which a donating step cannot reuse (0 of its buffers as
    loaded); placed with put_donatable, every output lands in its donated input's buffer."""
    config = rwkv_jax.RWKV6Config(vocab_size=64, n_layer=2, n_embd=32, head_size=16, init="plain")
    path = tmp_path / "finch.pth"
    rwkv_jax.save_official(rwkv_jax.RWKV6(config, rngs=nnx.Rngs(0)), path)
    double = jax.jit(lambda tree: jax.tree.map(lambda x: 2 * x, tree), donate_argnums=0)

    def reused_buffers(params) -> int:
        before = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(params)]
        after = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(double(params))]
        return sum(a == b for a, b in zip(before, after, strict=True))

    as_loaded = nnx.state(rwkv_jax.load_official(path), nnx.Param)
    placed = put_donatable(nnx.state(rwkv_jax.load_official(path), nnx.Param), jax.devices()[0])
    assert reused_buffers(as_loaded) < len(jax.tree.leaves(as_loaded))  # the defect this guards against
    assert reused_buffers(placed) == len(jax.tree.leaves(placed))
