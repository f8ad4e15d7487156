"""Times the WKV-4 forms (recurrent, associative scan, Pallas kernel), forward and forward+backward.

On CPU the Pallas kernel runs in interpret mode (a correctness path, not a speed one); on GPU/TPU it is the
compiled kernel. Prints one row per (form, pass): compile time, median step time, tokens per second, and the
relative difference of y from the first form listed.

    python experiments/bench_wkv4.py --batch 2 --length 1024 --channels 256
    python experiments/bench_wkv4.py --batch 8 --length 4096 --channels 2048 --dtype bfloat16   # model size
"""

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.wkv.impl import Impl
from rwkv_jax.wkv.v4 import WKV4State, wkv4


def make_inputs(batch: int, length: int, channels: int, dtype) -> tuple:
    rng = np.random.default_rng(0)
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    return (
        f32(-np.exp(rng.normal(0, 1, channels))),
        f32(rng.normal(0, 1, channels)),
        jnp.asarray(rng.normal(0, 1, (batch, length, channels)), dtype),
        jnp.asarray(rng.normal(0, 1, (batch, length, channels)), dtype),
        WKV4State(
            f32(rng.normal(0, 1, (batch, channels))),
            f32(rng.uniform(0.5, 2, (batch, channels))),
            f32(rng.normal(0, 1, (batch, channels))),
        ),
    )


def forward_fn(impl: Impl):
    return jax.jit(functools.partial(wkv4, impl=impl))


def forward_backward_fn(impl: Impl):
    def loss(w_log, u, k, v, state):
        y, final = wkv4(w_log, u, k, v, state, impl=impl)
        return jnp.sum(y.astype(jnp.float32)) + sum(jnp.sum(x) for x in final)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


def timed(function, args, repeats: int) -> tuple[float, float, object]:
    """(compile seconds, median seconds per call, last result)."""
    start = time.perf_counter()
    compiled = function.lower(*args).compile()
    compile_s = time.perf_counter() - start
    result = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times), result


def relative_difference(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--forms", default="recurrent,scan,pallas", help="comma-separated Impl names")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    inputs = make_inputs(args.batch, args.length, args.channels, jnp.dtype(args.dtype))
    tokens = args.batch * args.length
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); B={args.batch} T={args.length} "
          f"C={args.channels} {args.dtype}; pallas is interpret mode on CPU")  # fmt: skip
    print(
        f"{'form':<10} {'pass':<9} {'compile s':>10} {'step ms':>10} {'tokens/s':>12} {'y vs 1st form':>15}"
    )
    baseline = None
    for name in args.forms.split(","):
        impl = Impl.parse(name)
        for label, make in (("forward", forward_fn), ("fwd+bwd", forward_backward_fn)):
            compile_s, step_s, result = timed(make(impl), inputs, args.repeats)
            difference = ""
            if label == "forward":
                baseline = result[0] if baseline is None else baseline
                difference = f"{relative_difference(result[0], baseline):.1e}"
            print(f"{name:<10} {label:<9} {compile_s:>10.2f} {1e3 * step_s:>10.2f} {tokens / step_s:>12.0f} "
                  f"{difference:>15}")  # fmt: skip


if __name__ == "__main__":
    main()
