"""Shared fixtures of the training tests: a small byte-level binidx corpus and a tiny, fast config."""

import pathlib

import numpy as np
import pytest

from rwkv_jax.models.family import get_family
from rwkv_jax.training.binidx import write_binidx
from rwkv_jax.training.config import ConfigDict, default_config, model_section

WORDS = "the of and to a in that is was he for it with as his on be at by had not are but from or".split()


def synthetic_text(seed: int, num_words: int) -> bytes:
    """Deterministic word salad (ASCII), enough structure for a loss to fall within a few steps."""
    rng = np.random.default_rng(seed)
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), num_words)]
    lines = [" ".join(words[i : i + 8]).capitalize() + ".\n" for i in range(0, num_words, 8)]
    return "".join(lines).encode("ascii")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(train, val) binidx prefixes: three train documents and one validation document, bytes + end token."""
    root = tmp_path_factory.mktemp("corpus")
    docs = [np.frombuffer(synthetic_text(seed, 3000) + b"\0", np.uint8) for seed in range(3)]
    write_binidx(root / "train", docs, np.uint8)
    write_binidx(root / "val", [np.frombuffer(synthetic_text(99, 600) + b"\0", np.uint8)], np.uint8)
    return str(root / "train"), str(root / "val")


# Small sizes for the fields a family has (a one-layer model that compiles in seconds).
TINY_FIELDS = dict(head_size=16, time_mix_extra_dim=4, time_decay_extra_dim=8, chunk_size=8)


def tiny_model_section(family: str) -> ConfigDict:
    """``config.model`` of a one-layer, 32-wide, byte-level float32 model of ``family``."""
    record = get_family(family)
    wkv_impl = "chunked" if record.wkv is None or "chunked" in record.wkv.form_names else "recurrent"
    extras = {key: value for key, value in TINY_FIELDS.items() if key in record.field_names}
    return model_section(
        family, n_layer=1, n_embd=32, vocab_size=256, dtype="float32", wkv_impl=wkv_impl, **extras
    )


def tiny_config(corpus: tuple[str, str], family: str = "rwkv4") -> ConfigDict:
    """A one-layer byte-level model and a few short steps: compiles and runs in seconds on this CPU."""
    c = default_config()
    c.model = tiny_model_section(family)
    c.data.train_path, c.data.val_path = corpus
    c.data.seq_len, c.data.batch_size = 16, 2
    c.optim.lr, c.optim.warmup_steps = 1e-2, 2
    c.train.steps, c.train.log_every, c.train.progress = 6, 1, False
    c.ckpt.every, c.eval.every, c.eval.batches, c.eval.sample_tokens = 2, 0, 2, 0
    return c


@pytest.fixture()
def workdir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "run"
