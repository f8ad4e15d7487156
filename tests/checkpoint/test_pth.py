"""read_pth / write_pth against torch.save / torch.load (torch is only a test reference here)."""

import numpy as np
import pytest

from rwkv_jax.checkpoint.pth import read_pth


@pytest.mark.parametrize("mmap", [True, False])
def test_fixture_checkpoints_match_torch_load(tiny_rwkv_dir, mmap):
    torch = pytest.importorskip("torch")
    for path in sorted(tiny_rwkv_dir.glob("*.pth")):
        expected = torch.load(path, weights_only=True)
        loaded = read_pth(path, mmap=mmap)
        assert list(loaded) == list(expected), path.name
        for key, tensor in expected.items():
            assert loaded[key].dtype == np.float32
            np.testing.assert_array_equal(loaded[key], tensor.numpy(), err_msg=f"{path.name}: {key}")
