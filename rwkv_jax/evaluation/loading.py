"""One loader for every checkpoint kind evaluation reads: a training workdir, a Hugging Face folder, a
BlinkDL ``.pth`` or ``.safetensors`` file."""

import os
import pathlib
from typing import NamedTuple

from flax import nnx

from rwkv_jax.checkpoint.official import load_official
from rwkv_jax.training.evaluate import load_run

# Tokenizers implied by a vocabulary size when nothing names one (byte-level tiny models, RWKV World).
TOKENIZER_BY_VOCAB = {256: "byte", 65536: "world"}


class Loaded(NamedTuple):
    """A loaded checkpoint: the model, the tokenizer its run recorded (None for files), the step (None for
    files)."""

    model: nnx.Module
    tokenizer: str | None
    step: int | None


def is_workdir(path: str | os.PathLike) -> bool:
    """True for a training run directory of experiments/train.py (config.json and checkpoints/)."""
    path = pathlib.Path(path)
    return (path / "config.json").is_file() and (path / "checkpoints").is_dir()


def load_model(
    path: str | os.PathLike, dtype: str | None = None, wkv_impl: str | None = None, step: int | None = None
) -> Loaded:
    """The checkpoint at ``path``, any kind.

    A workdir gives its checkpoint at ``step`` (default the newest complete one), its config's tokenizer,
    and its config's dtype and WKV form unless ``dtype`` / ``wkv_impl`` are given; anything else goes to
    :func:`rwkv_jax.checkpoint.official.load_official` (default float32, auto).
    """
    if is_workdir(path):
        overrides = {key: value for key, value in (("dtype", dtype), ("wkv_impl", wkv_impl)) if value}
        fns, params, config, step = load_run(path, step, model_overrides=overrides)
        return Loaded(fns.module(params), config.data.get("tokenizer"), step)
    if step is not None:
        raise ValueError(f"step={step} applies to a training workdir; {path} is not one")
    return Loaded(load_official(path, dtype=dtype or "float32", wkv_impl=wkv_impl or "auto"), None, None)


def default_tokenizer(recorded: str | None, vocab_size: int) -> str:
    """The checkpoint's own tokenizer, else the one its vocabulary size implies; ValueError otherwise."""
    if recorded:
        return recorded
    if vocab_size in TOKENIZER_BY_VOCAB:
        return TOKENIZER_BY_VOCAB[vocab_size]
    raise ValueError(
        f"vocabulary of {vocab_size} ids implies no tokenizer: name one (tokenizer=byte, world or a "
        "tokenizer.json path)"
    )
