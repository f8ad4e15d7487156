"""Times forward + backward of a WKV family's training form (chunked, several chunk sizes) against lax.scan.

    python experiments/bench_wkv_training.py                   # WKV-6, B=1, H=8, N=64, T=4096
    python experiments/bench_wkv_training.py --family v7       # WKV-7 (RWKV-7), same sizes
    python experiments/bench_wkv_training.py --length 1024 --chunk-sizes 32,64
    python experiments/bench_wkv_training.py --chunk-sizes 64 --profile /tmp/wkv_trace   # where the time goes

Each timing is the median of ``--repeats`` runs of a jitted ``jax.value_and_grad`` of a scalar loss with
respect to every input (WKV-6: r, k, v, w_log, u, state; WKV-7: r, k, v, w_log, a, b, state), each run
right after an untimed run of the same form (compilation excluded); the forms take turns within each
repeat. Two clocks: wall time, and
this process's CPU time (summed over XLA's threads), which moves less when other processes load the
machine; its ratio understates a form that uses several cores. "temp MB" is what XLA allocates besides the
inputs and outputs (the residuals kept for the backward included), from the compiled program's memory
analysis. ``--profile DIR`` traces three more runs of each form (``jax.profiler``, Perfetto format) and prints
XLA's ops per run by kind: their count and time, the main cost of the chunk loops being the per-op overhead
of hundreds of small ops per chunk.
"""

import argparse
import collections
import functools
import gzip
import json
import pathlib
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.wkv.v6 import wkv6_chunked, wkv6_recurrent
from rwkv_jax.wkv.v7 import wkv7_chunked, wkv7_recurrent

FORMS = {"v6": (wkv6_recurrent, wkv6_chunked), "v7": (wkv7_recurrent, wkv7_chunked)}


def make_inputs(batch: int, length: int, heads: int, size: int, family: str = "v6") -> tuple[jax.Array, ...]:
    """float32 inputs over the family's whole range of decays (WKV-6: w_log in [-exp(5), -1e-6]; WKV-7:
    w_log in (-exp(-0.5), 0) and the model's a = -kk, b = kk * iclr with unit kk)."""
    rng = np.random.default_rng(0)
    shape = (batch, length, heads, size)
    r, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(3))
    state = jnp.zeros((batch, heads, size, size), jnp.float32)
    if family == "v6":
        w_log = jnp.asarray(-np.exp(rng.uniform(np.log(1e-6), 5.0, size=shape)), jnp.float32)
        u = jnp.asarray(rng.normal(size=(heads, size)), jnp.float32)
        return r, k, v, w_log, u, state
    w_log = jnp.asarray(-np.exp(-0.5) / (1 + np.exp(-3 * rng.normal(size=shape))), jnp.float32)
    kk = rng.normal(size=shape)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    iclr = 1 / (1 + np.exp(-rng.normal(size=shape)))
    a, b = (jnp.asarray(x, jnp.float32) for x in (-kk, kk * iclr))
    return r, k, v, w_log, a, b, state


def forward_backward_step(form, num_inputs: int = 6):
    """A jitted value-and-gradient of ``sum(y^2) + sum(state^2)`` with respect to every input."""

    def loss(*inputs):
        y, state = form(*inputs)
        return jnp.sum(jnp.square(y)) + jnp.sum(jnp.square(state))

    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(num_inputs))))


def temporary_megabytes(step, args: tuple[jax.Array, ...]) -> float:
    """XLA's temporary buffers of the compiled step (what it allocates besides its inputs and outputs), MB."""
    return step.lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20


def interleaved_seconds(
    steps: dict, args: tuple[jax.Array, ...], repeats: int
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each step. The forms take turns within each repeat, so that a shared
    machine's changing load hits them alike, and each timed call follows an untimed call of the same step:
    the first call after another form ran took up to 1.8x as long (a chunked form right after lax.scan,
    whose 1.1-1.6 GB of temporaries reshape the allocator's heap), which would charge the form timed after
    the scan, not the form's own steady cost as in a training loop."""
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            jax.block_until_ready(step(*args))
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(step(*args))
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {
        name: tuple(statistics.median(column) for column in zip(*t, strict=True)) for name, t in times.items()
    }


def op_profile(
    step, args: tuple[jax.Array, ...], directory: str, runs: int = 3
) -> list[tuple[str, int, float]]:
    """XLA's ops of one run of ``step`` by kind (the op name without its ``.N`` suffix), most time first:
    ``(kind, count per run, ms per run)``, from a ``jax.profiler`` trace of ``runs`` runs in ``directory``."""
    with jax.profiler.trace(directory, create_perfetto_trace=True):
        for _ in range(runs):
            jax.block_until_ready(step(*args))
    trace_file = max(pathlib.Path(directory).rglob("*.trace.json.gz"), key=lambda path: path.stat().st_mtime)
    events = json.load(gzip.open(trace_file))["traceEvents"]
    not_ops = ("ThunkExecutor", "$", "PjitFunction", "Common", "while", "end:")
    count, micros = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not event["name"].startswith(not_ops):
            kind = re.sub(r"\.\d+$", "", event["name"])
            count[kind] += 1
            micros[kind] += event["dur"]
    return [(kind, count[kind] // runs, us / runs / 1e3) for kind, us in micros.most_common()]


def print_op_profile(name: str, profile: list[tuple[str, int, float]], top: int = 8) -> None:
    total_ops, total_ms = sum(c for _, c, _ in profile), sum(ms for _, _, ms in profile)
    print(f"{name}: {total_ops} ops per run, {total_ms:.1f} ms in ops")
    for kind, ops, ms in profile[:top]:
        print(f"    {kind:<40}{ops:>8} ops{ms:>9.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=sorted(FORMS), default="v6")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--chunk-sizes", default="", help="default: 16,32,64,128 (v6), 16,32,64 (v7)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", default="", help="a directory: trace each form and print its ops")
    args = parser.parse_args()

    inputs = make_inputs(args.batch, args.length, args.heads, args.head_size, args.family)
    print(
        f"WKV-{args.family[1:]} forward+backward, B={args.batch} T={args.length} H={args.heads} "
        f"N={args.head_size}, {jax.default_backend()}, median of {args.repeats} interleaved runs"
    )
    recurrent, chunked = FORMS[args.family]
    chunk_sizes = args.chunk_sizes or ("16,32,64,128" if args.family == "v6" else "16,32,64")
    steps = {"lax.scan": forward_backward_step(recurrent, len(inputs))}
    for chunk_size in (int(c) for c in chunk_sizes.split(",")):
        steps[f"chunked {chunk_size}"] = forward_backward_step(
            functools.partial(chunked, chunk_size=chunk_size), len(inputs)
        )
    seconds = interleaved_seconds(steps, inputs, args.repeats)
    print(f"{'form':<16}{'wall s':>10}{'speed-up':>10}{'CPU s':>10}{'speed-up':>10}{'temp MB':>10}")
    scan_wall, scan_cpu = seconds["lax.scan"]
    for name, (wall, cpu) in seconds.items():
        speed_ups = f"{wall:>10.4f}{scan_wall / wall:>10.1f}{cpu:>10.4f}{scan_cpu / cpu:>10.1f}"
        print(f"{name:<16}{speed_ups}{temporary_megabytes(steps[name], inputs):>10.0f}")
    if args.profile:
        for name, step in steps.items():
            print_op_profile(name, op_profile(step, inputs, f"{args.profile}/{name.replace(' ', '_')}"))


if __name__ == "__main__":
    main()
