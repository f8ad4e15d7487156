"""``train_and_evaluate(config, workdir)``: the training run, in banner sections as big_vision's train.py.

The run resumes from the newest good checkpoint in ``workdir/checkpoints`` and continues with exactly
the losses an uninterrupted run would have (same batches, same parameters and optimiser state, same program),
wherever the previous run was killed (tests/training/test_faults.py): a validation pass comes before the
checkpoint of its step, so the metrics up to a checkpoint are complete, and every file is written whole
(a temporary file renamed) or appended a record at a time. A non-finite loss stops the run at once with
:class:`NonFiniteLossError`; nothing is saved after it. The config is checked before anything is done.
"""

import json
import math
import os
import pathlib
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from rwkv_jax.finetune.training import finetune_model
from rwkv_jax.host_memory import put_donatable
from rwkv_jax.sharding import batch_sharding, batch_spec, make_mesh, tree_shardings
from rwkv_jax.training import distributed, shakespeare
from rwkv_jax.training.checkpointing import Checkpoints
from rwkv_jax.training.config import ConfigDict, lm_eval_task_list, validate
from rwkv_jax.training.data import END_OF_DOCUMENT, BatchOrder, encode_text, eval_batches, load_stream
from rwkv_jax.training.evaluate import evaluate_batches, token_byte_lengths
from rwkv_jax.training.metrics import MetricWriter, Progress
from rwkv_jax.training.model import ModelFns
from rwkv_jax.training.optim import make_optimizer, weight_decay_mask
from rwkv_jax.training.sharding_check import check_replicated
from rwkv_jax.training.step import (
    jit_eval_step,
    jit_train_step,
    make_eval_step,
    optimizer_state_shardings,
    train_step_of,
)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; the run stopped before saving anything from that step on."""


def data_paths(data: ConfigDict) -> tuple[str, str]:
    """The train and validation paths of ``config.data``, preparing the named dataset first if asked."""
    if data.prepare == "shakespeare":
        train, val = shakespeare.prepare(data.dir)
        return data.train_path or train, data.val_path or val
    if data.prepare:
        raise ValueError(f"unknown data.prepare {data.prepare!r}; expected 'shakespeare' or ''")
    if not data.train_path:
        raise ValueError("config.data.train_path is empty (a binidx prefix, a text file or a folder)")
    return data.train_path, data.val_path


def train_and_evaluate(config: ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints); returns the final metrics."""
    validate(config, device_count=jax.device_count())  # every value, before anything is written or built
    workdir = pathlib.Path(workdir)
    primary = distributed.is_primary()  # the process that writes logs and metrics (checkpoints: all)
    workdir.mkdir(parents=True, exist_ok=True)
    if primary:
        write_atomically(workdir / "config.json", config.to_json(indent=2))

    # ---- Mesh -------------------------------------------------------------------------------------------
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, context=config.mesh.context)
    rules = config.sharding_rules
    batch_sh = batch_sharding(mesh, rules)

    # ---- Input ------------------------------------------------------------------------------------------
    train_path, val_path = data_paths(config.data)
    seq_len, batch_size = config.data.seq_len, config.data.batch_size
    order = BatchOrder(load_stream(train_path, config.data.tokenizer), seq_len, batch_size, config.seed)
    val_batches = []
    if val_path:
        val_stream = load_stream(val_path, config.data.tokenizer)
        val_batches = eval_batches(val_stream, seq_len, batch_size, config.eval.batches)

    # ---- Model and optimiser ----------------------------------------------------------------------------
    module, trainable = finetune_model(config)  # a fresh init, or config.finetune's base and method
    module.remat_blocks = config.train.remat_blocks  # static: it goes into the graphdef the steps merge
    fns, params, frozen = ModelFns.split_trainable(module, trainable)
    del module
    mask = weight_decay_mask(fns.logical_axes, params, config.optim.wd_exclude_axes)
    tx, schedule = make_optimizer(config.optim, config.train.steps, mask)

    # ---- Shard ------------------------------------------------------------------------------------------
    param_sh = tree_shardings(fns.logical_axes, params, rules, mesh)
    params = put_donatable(params, param_sh)  # the train step donates them: XLA's own buffers
    frozen_sh = tree_shardings(fns.frozen_axes, frozen, rules, mesh)
    check_replicated((param_sh, frozen_sh), (params, frozen), mesh, config.sharding_max_replicated)
    frozen = jax.device_put(frozen, frozen_sh)
    opt_sh = optimizer_state_shardings(tx, params, param_sh, mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)

    # ---- Checkpoint -------------------------------------------------------------------------------------
    ckpts = Checkpoints(workdir / "checkpoints", config.ckpt.keep)
    phase("restore", 0)
    start, params, opt_state = ckpts.restore_latest(params, opt_state)

    # ---- Update and eval steps --------------------------------------------------------------------------
    step_fn = train_step_of(config, fns, tx)
    train_step = jit_train_step(step_fn, param_sh, opt_sh, batch_sh, frozen_sh)
    eval_fn = make_eval_step(fns, config.data.document_starts, batch_spec(config.sharding_rules))
    jitted_eval_step = jit_eval_step(eval_fn, param_sh, batch_sh, frozen_sh)

    def eval_step(params: Any, batch: np.ndarray) -> np.ndarray:
        return distributed.to_host(
            jitted_eval_step(params, distributed.global_array(batch, batch_sh), frozen)
        )

    byte_lengths = token_byte_lengths(config.data.tokenizer, config.model.vocab_size)

    def evaluate(step: int) -> dict[str, Any]:
        phase("eval", step)
        results = {
            f"val_{k}": v for k, v in evaluate_batches(eval_step, params, val_batches, byte_lengths).items()
        }
        writer.write(step, **{k: v for k, v in results.items() if k != "val_tokens"})
        loss, bpb = results["val_loss"], results["val_bits_per_byte"]
        progress.write(f"step {step}: validation loss {loss:.4f} nats/token, {bpb:.4f} bits/byte")
        if config.eval.sample_tokens:
            results["sample"] = sample_text(config, fns.module(params, frozen), step)
            progress.write(f"sample at step {step}:\n{results['sample']}\n")
        if lm_eval_task_list(config):
            scores = lm_eval_scores(config, fns.module(params, frozen))
            writer.write(step, **scores)
            progress.write(f"lm-eval at step {step}: {json.dumps(scores)}")
            results.update(scores)
        return results

    # ---- Loop -------------------------------------------------------------------------------------------
    total = config.train.steps
    writer = MetricWriter(workdir, resume_step=start, enabled=primary)
    progress = Progress(total, start, bar=config.train.progress, silent=not primary)
    results: dict[str, Any] = {"start_step": start}
    began = window_start = time.perf_counter()
    window_steps, step = 0, start
    try:
        while step < total:
            phase("train", step + 1)
            batch = order.batch(step)
            _check_vocab(batch, config.model.vocab_size, step)
            params, opt_state, metrics = train_step(
                params, opt_state, distributed.global_array(batch, batch_sh), frozen
            )
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss} at step {step + 1}; stopped without saving. The last good checkpoint is "
                    f"step {ckpts.latest_step()} in {ckpts.directory}"
                )
            step += 1
            window_steps += 1
            elapsed = time.perf_counter() - window_start
            progress.update(1, loss, window_steps * batch_size * seq_len / max(elapsed, 1e-9))
            out_of_time = 0 < config.train.max_seconds <= time.perf_counter() - began
            if step % config.train.log_every == 0 or step == total or out_of_time:
                writer.write(
                    step,
                    loss=loss,
                    grad_norm=float(metrics["grad_norm"]),
                    lr=float(schedule(step // config.optim.accum_steps)),
                    tokens_per_second=window_steps * batch_size * seq_len / max(elapsed, 1e-9),
                )
                window_start, window_steps = time.perf_counter(), 0
            # Validation before the checkpoint: a run resumed from this step has its metrics in full.
            if val_batches and config.eval.every and step % config.eval.every == 0 and step < total:
                evaluate(step)
            if config.ckpt.every and step % config.ckpt.every == 0:
                phase("save", step)
                ckpts.save(step, params, opt_state)
            if out_of_time:
                progress.write(f"time limit of {config.train.max_seconds:.0f} s reached at step {step}")
                break
        results.update(train_seconds=time.perf_counter() - began, final_step=step)
        if val_batches:
            results.update(evaluate(step))
        phase("save", step)
        ckpts.save(step, params, opt_state)
    finally:
        progress.close()
        writer.close()
        ckpts.close()
    if primary:
        write_atomically(workdir / "final_metrics.json", json.dumps(results, indent=2))
    phase("end", step)
    return results


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Writes ``text`` to a temporary file beside ``path`` and renames it: a kill leaves the old file or
    the new one, never half of one."""
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def phase(name: str, step: int) -> None:
    """Test instrumentation: with ``RWKV_JAX_PHASE_LOG=<file>`` set, appends ``"<name> <step>"`` to that
    file as the run enters each phase (``restore``, ``train`` of a step, ``eval``, ``save``, ``end``), so
    that tests/training/test_faults.py can SIGKILL the process inside a chosen phase. Unset: does nothing."""
    path = os.environ.get("RWKV_JAX_PHASE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{name} {step}\n")


def sample_text(config: ConfigDict, model: nnx.Module, step: int) -> str:
    """A continuation of ``config.eval.sample_prompt`` (rwkv_jax.generation.generate), decoded to text."""
    from rwkv_jax.generation import generate
    from rwkv_jax.tokenizers import get_tokenizer

    if jax.process_count() > 1:  # parameters spanning processes: each process samples from a full copy
        nnx.update(model, distributed.tree_to_host(nnx.state(model)))
    prompt = encode_text(config.eval.sample_prompt, config.data.tokenizer).tolist()
    result = generate(
        model,
        [prompt],
        config.eval.sample_tokens,
        temperature=config.eval.temperature,
        seed=step,
        stop_tokens=(END_OF_DOCUMENT,),
    )
    return get_tokenizer(config.data.tokenizer).decode(result.tokens[0])


def lm_eval_scores(config: ConfigDict, model: nnx.Module) -> dict[str, float]:
    """``config.eval.lm_eval_tasks`` run on ``model`` (lm-eval's adapter, the run's tokenizer):
    ``{"lm_eval/<task>/<metric>": value}``."""
    from rwkv_jax.evaluation.lm_eval_adapter import RWKVJaxLM, task_scores

    lm = RWKVJaxLM(model=model, tokenizer=config.data.tokenizer, batch_size=config.data.batch_size)
    include = config.eval.lm_eval_include_path or None
    return task_scores(lm, lm_eval_task_list(config), include, config.eval.lm_eval_limit)


def _check_vocab(batch: np.ndarray, vocab_size: int, step: int) -> None:
    if batch.max() >= vocab_size or batch.min() < 0:
        raise ValueError(
            f"batch {step} holds token ids in [{batch.min()}, {batch.max()}], outside the model's vocabulary "
            f"of {vocab_size}: check data.tokenizer and model.vocab_size"
        )
