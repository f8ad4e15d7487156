"""Evaluation: loss, perplexity and bits per byte over fixed batches; LAMBADA-style last-word accuracy.

Bits per byte divide the summed negative log-likelihood (converted to bits) by the number of UTF-8 bytes
the target tokens stand for, so models with different tokenizers compare on the same footing. For the byte
tokenizer every token is one byte and ``bpb = loss / ln 2``.
"""

import json
import math
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.finetune.training import finetune_model
from rwkv_jax.training.checkpointing import Checkpoints
from rwkv_jax.training.config import ConfigDict
from rwkv_jax.training.model import ModelFns


def token_byte_lengths(tokenizer: str, vocab_size: int) -> np.ndarray:
    """``[vocab_size]`` int64: how many bytes of text each token id decodes to (1 each for "byte")."""
    if tokenizer == "byte":
        return np.ones(vocab_size, np.int64)
    from rwkv_jax.tokenizers import get_tokenizer

    tok = get_tokenizer(tokenizer)

    def length(token_id: int) -> int:  # ids without text (end of document, unused rows) count 0 bytes
        try:
            return len(tok.decode_bytes([token_id]))
        except ValueError:
            return 0

    return np.array([length(i) for i in range(vocab_size)], np.int64)


def evaluate_batches(
    eval_step: Callable, params: Any, batches: Sequence[np.ndarray], byte_lengths: np.ndarray
) -> dict[str, float]:
    """Mean loss (nats/token), perplexity and bits per byte of the targets ``batch[:, 1:]`` of ``batches``.

    ``eval_step(params, batch) -> nll [B, T]`` (see ``step.make_eval_step``).
    """
    nll_sum, tokens, num_bytes = 0.0, 0, 0
    for batch in batches:
        nll = np.asarray(eval_step(params, np.asarray(batch, np.int32)), np.float64)
        nll_sum += float(nll.sum())
        tokens += nll.size
        num_bytes += int(byte_lengths[batch[:, 1:]].sum())
    loss = nll_sum / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": nll_sum / math.log(2.0) / max(num_bytes, 1),
        "tokens": float(tokens),
    }


def last_word_accuracy(
    fns: ModelFns,
    params: Any,
    passages: Sequence[str],
    encode: Callable[[str], Sequence[int]],
    pad_to: int = 64,
) -> dict[str, float]:
    """LAMBADA-style scoring: does the model predict every token of each passage's last word greedily?

    Each passage is split at its last space into a context and a target word (with its leading space). All
    tokens of the target must be the argmax predictions (teacher-forced) for the passage to count as
    correct. Passages are right-padded to a multiple of ``pad_to`` (the model is causal, so padding after
    the target changes nothing) and run one at a time. Returns accuracy, the mean target NLL (nats per
    word) and the number of passages.
    """
    apply = jax.jit(fns.apply)
    correct, nll_total = 0, 0.0
    for text in passages:
        context, sep, word = text.rstrip().rpartition(" ")
        if not sep or not context or not word:
            raise ValueError(f"passage has no 'context last-word' split: {text[:60]!r}")
        ctx_ids, word_ids = list(encode(context)), list(encode(" " + word))
        ids = ctx_ids + word_ids
        padded = np.zeros((1, -(-len(ids) // pad_to) * pad_to), np.int32)
        padded[0, : len(ids)] = ids
        logits, _ = apply(params, jnp.asarray(padded))
        positions = np.arange(len(ctx_ids) - 1, len(ids) - 1)  # the logits that predict the word's tokens
        word_logits = np.asarray(logits[0, positions], np.float64)
        logz = np.log(np.exp(word_logits - word_logits.max(-1, keepdims=True)).sum(-1)) + word_logits.max(-1)
        nll_total += float((logz - word_logits[np.arange(len(word_ids)), word_ids]).sum())
        correct += bool((word_logits.argmax(-1) == np.array(word_ids)).all())
    count = len(passages)
    return {"accuracy": correct / count, "word_nll": nll_total / count, "passages": float(count)}


def load_run(
    workdir: str | os.PathLike, step: int | None = None, model_overrides: dict[str, Any] | None = None
) -> tuple[ModelFns, Any, ConfigDict, int]:
    """The model of a training run: ``(fns, params, config, step)`` from ``workdir/config.json`` and its
    checkpoint at ``step`` (the newest complete one by default). ``model_overrides`` replace fields of
    ``config.model`` that leave the parameters as they are (``dtype``, ``wkv_impl``)."""
    workdir = pathlib.Path(workdir)
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: is {workdir} a training workdir?")
    config = ConfigDict(json.loads(config_file.read_text(encoding="utf-8")))
    ckpts = Checkpoints(workdir / "checkpoints")
    try:
        step = ckpts.latest_step() if step is None else step
        if step is None or step not in ckpts.complete_steps():
            raise FileNotFoundError(f"no complete checkpoint {step or ''} in {ckpts.directory}")
        run = ConfigDict({**config.to_dict(), "model": {**config.model.to_dict(), **(model_overrides or {})}})
        # A fine-tuning run saved its trained part only: the rest comes from its base again.
        fns, params, frozen = ModelFns.split_trainable(*finetune_model(run))
        params, _ = ckpts.restore(step, params)
        fns, params = ModelFns.split(fns.module(params, frozen))
    finally:
        ckpts.close()
    return fns, params, config, step
