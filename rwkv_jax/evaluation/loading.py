"""One loader for every checkpoint kind evaluation reads: a training workdir, a Hugging Face folder, a
BlinkDL ``.pth`` or ``.safetensors`` file."""

import os
import pathlib

from flax import nnx

from rwkv_jax.checkpoint.official import load_official
from rwkv_jax.training.evaluate import load_run

# Tokenizers implied by a vocabulary size when nothing names one (byte-level tiny models, RWKV World).
TOKENIZER_BY_VOCAB = {256: "byte", 65536: "world"}


def is_workdir(path: str | os.PathLike) -> bool:
    """True for a training run directory of experiments/train.py (config.json and checkpoints/)."""
    path = pathlib.Path(path)
    return (path / "config.json").is_file() and (path / "checkpoints").is_dir()


def load_model(
    path: str | os.PathLike, dtype: str = "float32", wkv_impl: str = "auto", step: int | None = None
) -> tuple[nnx.Module, str | None]:
    """``(model, tokenizer name the checkpoint records or None)`` of the checkpoint at ``path``.

    A workdir gives its checkpoint at ``step`` (default the newest complete one) and its config's
    tokenizer; anything else goes to :func:`rwkv_jax.checkpoint.official.load_official`.
    """
    if is_workdir(path):
        fns, params, config, _ = load_run(path, step, model_overrides={"dtype": dtype, "wkv_impl": wkv_impl})
        return fns.module(params), config.data.get("tokenizer")
    if step is not None:
        raise ValueError(f"step={step} applies to a training workdir; {path} is not one")
    return load_official(path, dtype=dtype, wkv_impl=wkv_impl), None


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
