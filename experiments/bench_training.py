r"""Training speed of rwkv_jax (forward + backward + AdamW) against the ``jaxrwkv`` package, same weights.

    python experiments/bench_training.py           # Finch 6 x 512, context 512, batch 4, vocab 65536, 256
    python experiments/bench_training.py --small   # a smoke test (seconds)
    python experiments/bench_training.py --vocabs 256 --rounds 5 --no-sweep

For each vocabulary a Finch with BlinkDL's initialisation is written as an official ``.pth``; every stack
loads that file. Each configuration trains in its own worker process (so that its peak memory, the
process's ``VmHWM``, is its own): ours is the real train step of :mod:`rwkv_jax.training` (``ModelFns``
split, ``make_optimizer``'s clipped AdamW, ``train_step_of``, jitted as the training loop jits it, with the
chunked WKV and float32 master parameters) computing in float32 and in bfloat16; ``jaxrwkv`` (the
``[bench]`` extra, when installed) is its ``AssociativeScanRWKV`` (the form its README recommends for
training) in float32 and in bfloat16 (its default: parameters, state and optimiser all bfloat16) with
``optax.adamw`` after the same clipping, ``vmap`` over the batch. The workers
take turns, ``--steps`` steps each per round for ``--rounds`` rounds on the same batch; tokens/s is the
median over every timed step. The first step's loss of each stack is printed (same weights, same batch:
they must agree).

Model FLOPs per token = 6 x (parameters of every matrix product: the layers' matrices and LoRAs and the
head; the embedding is a lookup) + 3 x the recurrent WKV's forward FLOPs (per head and token: decay times
state, the outer product k^T v and its sum, r S; ``6 N^2``). Utilisation = tokens/s x FLOPs per token over
this machine's float32 matmul throughput, measured in the same run (a 2048^3 ``jnp.dot``, best of several,
between rounds). Then peak memory against the sequence length: one training step at each ``--sweep``
context (ours, float32, the first vocabulary) and decoding as many tokens one at a time
(``rwkv_jax.decoder``), each in a fresh worker.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

FULL = dict(n_layer=6, n_embd=512, context=512, batch=4)
SMALL = dict(n_layer=2, n_embd=128, context=32, batch=2)
HEAD_SIZE = 64
WORKERS = (("ours", "float32"), ("ours", "bfloat16"), ("jaxrwkv", "float32"), ("jaxrwkv", "bfloat16"))


# ---- What runs inside a worker ------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """This process's peak resident memory in bytes (``VmHWM``: ``ru_maxrss`` would include the parent's)."""
    from experiments.bench import peak_resident_mib

    return int(peak_resident_mib() * 2**20)


def batch_of(shape: dict, vocab: int) -> np.ndarray:
    """The benchmark's batch: ``[B, T + 1]`` int32 token ids, the same for every stack."""
    rng = np.random.default_rng(0)
    return rng.integers(0, vocab, (shape["batch"], shape["context"] + 1)).astype(np.int32)


def ours_trainer(path: str, dtype: str) -> tuple[Callable, Any, Any, Any]:
    """``(jitted step, params, opt_state, optimiser)`` of rwkv_jax's training on the model in ``path``."""
    import jax

    import rwkv_jax
    from rwkv_jax.host_memory import put_donatable
    from rwkv_jax.sharding import batch_sharding, make_mesh, tree_shardings
    from rwkv_jax.training.config import default_config
    from rwkv_jax.training.model import ModelFns
    from rwkv_jax.training.optim import make_optimizer, weight_decay_mask
    from rwkv_jax.training.step import jit_train_step, optimizer_state_shardings, train_step_of

    config = default_config()
    model = rwkv_jax.load_official(path, dtype=dtype, wkv_impl="chunked", param_dtype="float32")
    fns, params = ModelFns.split(model)
    tx, _ = make_optimizer(config.optim, 1000, weight_decay_mask(fns.logical_axes, params))
    mesh = make_mesh()
    param_sh = tree_shardings(fns.logical_axes, params, config.sharding_rules, mesh)
    opt_sh = optimizer_state_shardings(tx, params, param_sh, mesh)
    params = put_donatable(params, param_sh)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
    step = jit_train_step(
        train_step_of(config, fns, tx), param_sh, opt_sh, batch_sharding(mesh, config.sharding_rules)
    )
    return step, params, opt_state, tx


def jaxrwkv_trainer(path: str, dtype: str) -> tuple[Callable, Any, Any, Any]:
    """``(jitted step, params, opt_state, optimiser)`` of the ``jaxrwkv`` package's RWKV-6 on ``path``."""
    import jax
    import jax.numpy as jnp
    import optax
    import torch
    from jaxrwkv import rwkv6

    from rwkv_jax.training.loss import token_nll

    model = rwkv6.AssociativeScanRWKV
    tensors = torch.load(path, map_location="cpu", weights_only=True)
    params, config = model.load_from_torch(tensors, None, dtype=jnp.dtype(dtype))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, b2=0.99))

    def loss(params: Any, batch: Any) -> Any:
        state = model.default_state(params, config)
        logits, _ = jax.vmap(lambda tokens: model.forward(params, tokens, state, config=config))(
            batch[:, :-1]
        )
        return jnp.mean(token_nll(logits, batch[:, 1:]))

    def step(params: Any, opt_state: Any, batch: Any) -> tuple:
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": value}

    return jax.jit(step, donate_argnums=(0, 1)), params, tx.init(params), tx


def train_worker(spec: dict) -> None:
    """Compiles one stack's train step, then runs ``steps k`` commands from stdin (one JSON line each)."""
    import jax

    make = {"ours": ours_trainer, "jaxrwkv": jaxrwkv_trainer}[spec["stack"]]
    step, params, opt_state, _ = make(spec["path"], spec["dtype"])
    batch = jax.numpy.asarray(batch_of(spec["shape"], spec["vocab"]))
    start = time.perf_counter()
    step = step.lower(params, opt_state, batch).compile()
    reply(compile_s=time.perf_counter() - start, rss_ready=peak_rss_bytes())
    for line in sys.stdin:
        times, losses = [], []
        for _ in range(int(line.split()[1])):
            start = time.perf_counter()
            params, opt_state, metrics = step(params, opt_state, batch)
            losses.append(float(metrics["loss"]))  # waits for the step
            times.append(time.perf_counter() - start)
        reply(times=times, losses=losses, peak_rss=peak_rss_bytes())


def decode_worker(spec: dict) -> None:
    """Decodes ``context`` tokens one at a time with ``rwkv_jax.decoder`` (batch 1); replies the peak."""
    import jax
    import jax.numpy as jnp

    import rwkv_jax

    decoder = rwkv_jax.decoder(rwkv_jax.load_official(spec["path"], dtype=spec["dtype"]))
    state, token = decoder.init_state(1), jnp.ones((1, 1), jnp.int32)
    start = time.perf_counter()
    for _ in range(spec["shape"]["context"]):
        logits, state = decoder.step(decoder.params, token, state)
    jax.block_until_ready(logits)
    reply(seconds=time.perf_counter() - start, peak_rss=peak_rss_bytes())


def reply(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# ---- What the parent does ----------------------------------------------------------------------------


class Worker:
    """A worker process: ``spec`` goes in on the command line, JSON lines come back on stdout."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self.read()

    def read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(
                f"worker {self.spec['stack']} {self.spec['dtype']} died (see its stderr above)"
            )
        return json.loads(line)

    def steps(self, count: int) -> dict:
        self.process.stdin.write(f"steps {count}\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
    """float32 FLOP/s of one ``[size, size] @ [size, size]`` jnp.dot, the best of ``repeats``."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, a))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def model_flops_per_token(path: str) -> tuple[float, float]:
    """``(total, WKV share)`` of the training FLOPs per token of the model in ``path`` (module docstring)."""
    from rwkv_jax.checkpoint.official import read_official

    tensors, _ = read_official(path)
    matmul = sum(
        int(np.prod(t.shape))
        for name, t in tensors.items()
        if (name.endswith(".weight") and t.ndim == 2 and name != "emb.weight")
        or name.endswith(("_w1", "_w2"))
    )
    width = tensors["emb.weight"].shape[1]
    layers = 1 + max(int(name.split(".")[1]) for name in tensors if name.startswith("blocks."))
    wkv = 3 * 6 * HEAD_SIZE * width * layers  # (width / N) heads x 6 N^2, forward + backward
    return 6 * matmul + wkv, wkv


def write_model(shape: dict, vocab: int, directory: str) -> str:
    """A Finch of ``shape`` with BlinkDL's initialisation, written as an official .pth; returns the path."""
    from experiments.bench import write_model as write_official

    return write_official("finch", {**shape, "vocab_size": vocab}, directory, init="official")


def has_jaxrwkv() -> bool:
    import importlib.util

    return importlib.util.find_spec("jaxrwkv") is not None


def speed(shape: dict, vocab: int, path: str, args: argparse.Namespace) -> list[dict]:
    """Every worker of one vocabulary, taking turns; one result row per worker."""
    stacks = [w for w in WORKERS if w[0] == "ours" or (has_jaxrwkv() and not args.no_jaxrwkv)]
    workers = [Worker(dict(stack=s, dtype=d, path=path, shape=shape, vocab=vocab)) for s, d in stacks]
    times: list[list[float]] = [[] for _ in workers]
    first_loss, peak, peaks_flops = [None] * len(workers), [0] * len(workers), []
    for worker in workers:  # warm-up: the first call of a compiled step is not timed
        result = worker.steps(1)
        first_loss[workers.index(worker)] = result["losses"][0]
    for _ in range(args.rounds):
        peaks_flops.append(matmul_flops_per_second())
        for i, worker in enumerate(workers):
            result = worker.steps(args.steps)
            times[i] += result["times"]
            peak[i] = result["peak_rss"]
    for worker in workers:
        worker.close()
    flops, wkv = model_flops_per_token(path)
    machine = max(peaks_flops)
    rows = []
    for i, worker in enumerate(workers):
        tokens_per_s = shape["batch"] * shape["context"] / statistics.median(times[i])
        rows.append(
            dict(
                stack=worker.spec["stack"],
                dtype=worker.spec["dtype"],
                vocab=vocab,
                tokens_per_s=tokens_per_s,
                utilisation=tokens_per_s * flops / machine,
                peak_gib=peak[i] / 2**30,
                compile_s=worker.ready["compile_s"],
                first_loss=first_loss[i],
                flops_per_token=flops,
                wkv_flops_per_token=wkv,
                matmul_gflops=machine / 1e9,
            )
        )
    return rows


def sweep(shape: dict, vocab: int, path: str, contexts: list[int]) -> list[dict]:
    """Peak memory of one training step and of decoding, at each context (a fresh worker each)."""
    rows = []
    for context in contexts:
        at = dict(shape, context=context)
        train = Worker(dict(stack="ours", dtype="float32", path=path, shape=at, vocab=vocab))
        trained = train.steps(1)
        train.close()
        decode = Worker(dict(stack="decode", dtype="float32", path=path, shape=at))
        decode.close()
        rows.append(
            dict(
                context=context,
                train_peak_gib=trained["peak_rss"] / 2**30,
                decode_peak_gib=decode.ready["peak_rss"] / 2**30,
            )
        )
    return rows


def profile(shape: dict, vocab: int, dtype: str, path: str) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds of our train step and of its parts, each jitted alone on the step's shapes: the head and
    the loss (forward + backward), the chunked WKV of every layer (forward + backward), the optimiser
    update; the rest (the layers' projections, LoRAs, mixes, norms) is the step minus those. Also the
    step's seconds per kind of operation (:func:`op_kind_seconds`)."""
    import jax
    import jax.numpy as jnp

    from experiments.bench_kernels import median_seconds
    from rwkv_jax.models.projection import project
    from rwkv_jax.training.loss import token_nll
    from rwkv_jax.wkv.v6 import wkv6

    step, params, opt_state, tx = ours_trainer(path, dtype)
    batch = jnp.asarray(batch_of(shape, vocab))
    b, t, c, layers = shape["batch"], shape["context"], shape["n_embd"], shape["n_layer"]
    key = jax.random.split(jax.random.key(0), 6)
    x = jax.random.normal(key[0], (b, t, c), dtype)
    head = params["head"]["kernel"]

    def head_loss(x: Any, kernel: Any) -> Any:
        return jnp.sum(token_nll(project(x, kernel.astype(dtype)), batch[:, 1:]))  # as the model's head

    rkv = [jax.random.normal(key[i], (b, t, c // HEAD_SIZE, HEAD_SIZE), dtype) for i in (1, 2, 3)]
    w_log = -jnp.exp(jax.random.normal(key[4], rkv[0].shape, jnp.float32) - 2)
    u = jnp.zeros((c // HEAD_SIZE, HEAD_SIZE), jnp.float32)

    def wkv_layers(r: Any, k: Any, v: Any, w_log: Any) -> Any:
        y, _ = wkv6(r, k, v, w_log, u, impl="chunked")
        return jnp.sum(y.astype(jnp.float32))  # one layer; its seconds are multiplied by the layers below

    parts = {
        "step": median_seconds(lambda: step(*jax.tree.map(jnp.copy, (params, opt_state)), batch), (), 3),
        "head + loss": median_seconds(jax.jit(jax.grad(head_loss, (0, 1))), (x, head), 3),
        "WKV (all layers)": layers
        * median_seconds(jax.jit(jax.grad(wkv_layers, (0, 1, 2, 3))), (*rkv, w_log), 3),
        "AdamW update": median_seconds(jax.jit(tx.update), (params, opt_state, params), 3),
    }
    parts["rest (projections, LoRAs, mixes, norms)"] = parts["step"] - sum(list(parts.values())[1:])
    kinds = op_kind_seconds(step, (*jax.tree.map(jnp.copy, (params, opt_state)), batch))
    return parts, kinds


def op_kind_seconds(function: Callable, args: tuple, top: int = 12) -> dict[str, float]:
    """Seconds per kind of XLA:CPU operation in one call of the compiled ``function``, summed over the
    threads (so more than the call's wall time), from a ``jax.profiler`` trace: each executed operation is
    an event named after its HLO instruction (``ynn_fusion.35``: a dot kernel with its fused elementwise
    work; ``copy_bitcast_fusion.*``: a transposed copy; ``wrapped_broadcast.*``: a buffer filled with a
    constant), counted under that name without its number."""
    import collections
    import glob
    import re

    import jax

    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            jax.block_until_ready(function(*args))
        (trace,) = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)
        data = jax.profiler.ProfileData.from_file(trace)
    kinds: collections.Counter = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):  # XLA:CPU's worker threads
                continue
            for event in line.events:
                if not event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):  # the executor itself
                    kinds[re.sub(r"[.\d]+$", "", event.name)] += event.duration_ns / 1e9
    return dict(kinds.most_common(top))


def print_tables(rows: list[dict], sweep_rows: list[dict], shape: dict) -> None:
    print(
        f"\nFinch {shape['n_layer']} x {shape['n_embd']}, context {shape['context']}, "
        f"batch {shape['batch']}; "
        f"float32 matmul peak {rows[0]['matmul_gflops']:.0f} GFLOP/s (2048^3 jnp.dot, best in this run)\n"
    )
    print(
        "| stack | compute | vocab | tokens/s | vs jaxrwkv | GFLOP/token | utilisation | peak GiB "
        "| compile s | first loss |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        base = [r["tokens_per_s"] for r in rows if r["stack"] == "jaxrwkv" and r["vocab"] == row["vocab"]]
        ratio = f"{row['tokens_per_s'] / max(base):.2f}x" if base else ""  # against jaxrwkv's faster dtype
        print(
            f"| {row['stack']} | {row['dtype']} | {row['vocab']} | {row['tokens_per_s']:.1f} | {ratio} | "
            f"{row['flops_per_token'] / 1e9:.3f} | {100 * row['utilisation']:.0f}% | {row['peak_gib']:.2f} | "
            f"{row['compile_s']:.1f} | {row['first_loss']:.4f} |"
        )
    if sweep_rows:
        print("\n| context | training peak GiB | decoding peak GiB |\n| --- | --- | --- |")
        for row in sweep_rows:
            print(f"| {row['context']} | {row['train_peak_gib']:.2f} | {row['decode_peak_gib']:.2f} |")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="a tiny shape (smoke test)")
    parser.add_argument("--vocabs", default="65536,256", help="comma list of vocabulary sizes")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every worker")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per worker and round")
    parser.add_argument("--sweep", default="128,256,512,1024", help="contexts of the memory sweep ('' none)")
    parser.add_argument("--no-jaxrwkv", action="store_true", help="skip the jaxrwkv package")
    parser.add_argument("--json", default="bench_training.json", help="where to write the figures")
    parser.add_argument("--profile", action="store_true", help="only the step's parts (first vocab)")
    parser.add_argument("--profile-dtype", default="float32", help="compute dtype of --profile")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        (decode_worker if spec["stack"] == "decode" else train_worker)(spec)
        return {}
    shape = SMALL if args.small else FULL
    if args.profile:
        with tempfile.TemporaryDirectory() as directory:
            vocab = int(args.vocabs.split(",")[0])
            parts, kinds = profile(shape, vocab, args.profile_dtype, write_model(shape, vocab, directory))
        for name, seconds in parts.items():
            print(f"| {name} | {seconds:.3f} | {100 * seconds / parts['step']:.0f}% |")
        print("\n| operation kind (one step, seconds summed over threads) | seconds |\n| --- | --- |")
        for name, seconds in kinds.items():
            print(f"| {name} | {seconds:.3f} |")
        return parts
    rows, sweep_rows = [], []
    with tempfile.TemporaryDirectory() as directory:
        for vocab in [int(v) for v in args.vocabs.split(",")]:
            path = write_model(shape, vocab, directory)
            rows += speed(shape, vocab, path, args)
            if args.sweep and not sweep_rows:
                sweep_rows = sweep(shape, vocab, path, [int(c) for c in args.sweep.split(",")])
    print_tables(rows, sweep_rows, shape)
    result = dict(shape=shape, rows=rows, sweep=sweep_rows)
    with open(args.json + ".tmp", "w") as file:
        json.dump(result, file, indent=1)
    os.replace(args.json + ".tmp", args.json)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
