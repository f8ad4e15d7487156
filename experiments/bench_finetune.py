r"""Peak memory and speed of fine-tuning methods on this machine: full fine-tuning, state tuning, LoRA.

    python experiments/bench_finetune.py [--preset goose-0b1] [--seq-len 64] [--batch 4] [--steps 5]
        [--dtype float32|bfloat16] [--json out.json]

Each method runs in its own subprocess (peak resident memory, Linux's ``VmHWM``, is per process): the
preset's model with random weights (N(0, 0.02^2), made tensor by tensor), the method applied
(:func:`rwkv_jax.finetune.training` splits trained and frozen variables as ``experiments/train.py`` does),
the training step of ``rwkv_jax.training.step`` under ``jax.jit`` with AdamW, one step to compile, then
``--steps`` timed steps. ``--dtype`` is the compute and frozen-weight dtype; full fine-tuning keeps float32
master weights as training does. Memory is reported twice: the training step's buffers as XLA plans them
(``compiled.memory_analysis()``: inputs, outputs not donated, scratch) and the process's peak RSS (which
also holds the JAX runtime, the model while it is made and allocator slack). Prints one line per method
and the ratios to full fine-tuning.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from experiments.bench import peak_resident_mib

METHODS = ("none", "state", "lora")


def random_model(preset: str, dtype: str, param_dtype: str | None):
    """The preset's model with N(0, 0.02^2) weights, made one tensor at a time (building the model with its
    initialisation holds temporaries as large as the model: they would dominate the peak memory)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rwkv_jax.presets import get_preset

    abstract = nnx.eval_shape(lambda: get_preset(preset).build(dtype=dtype, param_dtype=param_dtype))
    graphdef, shapes = nnx.split(abstract)
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    values = [
        (0.02 * jax.random.normal(key, leaf.shape, jnp.float32)).astype(leaf.dtype)
        for key, leaf in zip(keys, leaves, strict=True)
    ]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, values))


def run_method(method: str, preset: str, seq_len: int, batch: int, steps: int, dtype: str) -> dict:
    """Trains ``steps`` steps with ``method`` in this process; returns its figures."""
    import jax
    import numpy as np
    import optax
    from flax import nnx

    from rwkv_jax.finetune.lora import LoRAConfig, LoRAParam, add_adapters
    from rwkv_jax.finetune.state import TunedState, add_state_tuning
    from rwkv_jax.presets import get_preset
    from rwkv_jax.training.model import ModelFns
    from rwkv_jax.training.step import make_train_step

    jax.numpy.zeros(1).block_until_ready()  # the backend up: the process's own memory before any model
    baseline = peak_resident_mib()
    param_dtype = "float32" if method == "none" else None  # frozen weights stay in the compute dtype
    model = random_model(preset, dtype, param_dtype)
    trainable = nnx.Param
    if method == "state":
        model, trainable = add_state_tuning(model), TunedState
    elif method == "lora":
        targets = ("att.receptance", "att.key", "att.value", "att.output")
        model, trainable = (
            add_adapters(model, LoRAConfig(targets, rank=8, alpha=16.0, init="lora")),
            LoRAParam,
        )
    fns, params, frozen = ModelFns.split_trainable(model, trainable)
    del model
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)
    setup = peak_resident_mib()
    step = jax.jit(make_train_step(fns, tx), donate_argnums=(0, 1))
    compiled = step.lower(params, opt_state, np.zeros((batch, seq_len + 1), np.int32), frozen).compile()
    memory = compiled.memory_analysis()  # XLA's buffers of the step: inputs, outputs not donated, scratch
    step_bytes = memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
    step_mib = (step_bytes + memory.temp_size_in_bytes) / 2**20
    rng = np.random.default_rng(0)
    vocab = get_preset(preset).config().vocab_size
    batches = [rng.integers(0, vocab, (batch, seq_len + 1)).astype(np.int32) for _ in range(steps + 1)]
    params, opt_state, metrics = step(params, opt_state, batches[0], frozen)
    jax.block_until_ready(metrics)
    began = time.perf_counter()
    for tokens in batches[1:]:
        params, opt_state, metrics = step(params, opt_state, tokens, frozen)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - began
    count = lambda tree: int(sum(np.size(x) for x in jax.tree.leaves(tree)))  # noqa: E731
    return {
        "method": method,
        "trained_parameters": count(params),
        "frozen_parameters": count(frozen),
        "tokens_per_second": steps * batch * seq_len / seconds,
        "peak_rss_mib": peak_resident_mib(),
        "baseline_rss_mib": baseline,
        "setup_rss_mib": setup,
        "step_mib": step_mib,
        "loss": float(metrics["loss"]),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="goose-0b1")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated among {METHODS}")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method, print its JSON
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    settings = (args.preset, args.seq_len, args.batch, args.steps, args.dtype)
    if args.one:
        print(json.dumps(run_method(args.one, *settings)))
        return 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; expected among {METHODS}")
    results = []
    for method in methods:
        command = [sys.executable, __file__, *argv, "--one", method]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    full = next((r for r in results if r["method"] == "none"), None)
    print(
        f"{args.preset}, {args.dtype}, batch {args.batch} x {args.seq_len} tokens, {args.steps} timed steps"
    )
    for r in results:
        ratio = ""
        if full is not None:
            ratio = (
                f"  of full: step memory x{r['step_mib'] / full['step_mib']:.2f}, "
                f"peak x{r['peak_rss_mib'] / full['peak_rss_mib']:.2f}, "
                f"speed x{r['tokens_per_second'] / full['tokens_per_second']:.2f}"
            )
        print(
            f"{r['method']:>5}: trained {r['trained_parameters']:>11,} frozen {r['frozen_parameters']:>11,}  "
            f"step {r['step_mib']:6.0f} MiB  peak RSS {r['peak_rss_mib']:6.0f} MiB (process alone "
            f"{r['baseline_rss_mib']:.0f})  {r['tokens_per_second']:5.0f} tokens/s{ratio}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
