"""Decoding with the blocks stored stacked (:mod:`rwkv_jax.decoding`): program size, compile time,
temporaries and speed, the per-layer layout (before) against the stored stacks (now).

    PYTHONPATH=. python experiments/bench_decode_stack.py                     # all three parts, ~5 min
    PYTHONPATH=. python experiments/bench_decode_stack.py --parts 1 --depths 12 24 61 --width 256

1. The one-token step against depth (Finch, ``--width`` wide, vocabulary 256, abstract parameters: nothing
   is initialised): StableHLO ops of the lowered program and seconds to lower + compile, for the loop over
   per-layer parameters (what the one-token step runs, before and now) and a scan over the stored stacks.
2. Finch 12 x 768, vocabulary 65536: XLA's memory analysis (temporaries) of the one-token step, of that
   scan, and of a 512-token prefill (head on the last position), before (per-layer parameters, which a
   prefill stacks inside the call) and now (stored stacks).
3. The same shape with random weights, batch 1: decode tokens/s of the loop on the model's own arrays
   (before), the loop on views of the stacks (now) and the scan over the stacks, and prefill tokens/s
   before / now, taking turns ``--repeats`` times (each figure printed per turn).
"""

import argparse
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import rwkv_jax
from rwkv_jax import decoding

PREFILL = 512


def finch(n_layer: int, width: int, vocab: int, abstract: bool) -> nnx.Module:
    config = rwkv_jax.RWKV6Config(vocab_size=vocab, n_layer=n_layer, n_embd=width, head_size=64, init="plain")

    def build() -> nnx.Module:
        return rwkv_jax.RWKV6(config, rngs=nnx.Rngs(0))

    return nnx.eval_shape(build) if abstract else build()


def scan_stacked(structure: decoding.Structure, params: decoding.Params, tokens: Any, state: Any) -> Any:
    """The one-token step as a scan over the stored stacks (what the step does not run on CPU)."""
    return nnx.merge(structure.stacked, params.stacked).forward(tokens, state, last_only=True)


def programs(model: nnx.Module) -> dict[str, tuple[Any, tuple]]:
    """name -> (jitted function, its arguments but the tokens) for the per-layer and stacked layouts."""
    now, stacked = decoding._structure(model, None, stacked=True)
    graphdef, state = nnx.split(model)
    before = decoding.Structure(graphdef)
    state0 = model.init_state(1)  # zeros, concrete even for an abstract model
    step = functools.partial(decoding.apply, last_only=True)
    return {
        "before": (jax.jit(functools.partial(step, before)), (decoding.Params(state), state0)),
        "now": (jax.jit(functools.partial(step, now)), (decoding.Params(state, stacked), state0)),
        "scan": (jax.jit(functools.partial(scan_stacked, now)), (decoding.Params(state, stacked), state0)),
    }


def lower(function: Any, args: tuple, length: int) -> Any:
    tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
    return function.lower(args[0], tokens, args[1])


def depth_part(depths: list[int], width: int) -> None:
    print(f"\n1. one-token step, Finch {width} wide, vocabulary 256: StableHLO ops / lower + compile seconds")
    print("| layers | loop (per-layer) | scan over the stored stacks |\n|---|---|---|")
    for n_layer in depths:
        cells = []
        for name in ("now", "scan"):
            function, args = programs(finch(n_layer, width, 256, abstract=True))[name]
            start = time.perf_counter()
            lowered = lower(function, args, 1)
            lowered.compile()
            seconds = time.perf_counter() - start
            cells.append(f"{lowered.as_text().count('stablehlo.'):,} ops / {seconds:.1f} s")
        print(f"| {n_layer} | {' | '.join(cells)} |", flush=True)


def memory_part() -> None:
    print("\n2. Finch 12 x 768, vocabulary 65536: temporaries (XLA memory analysis), MiB")
    jitted = programs(finch(12, 768, 65536, abstract=True))
    for name, length in (("before", 1), ("now", 1), ("scan", 1), ("before", PREFILL), ("now", PREFILL)):
        analysis = lower(*jitted[name], length).compile().memory_analysis()
        print(f"{name} {length} tokens: {analysis.temp_size_in_bytes / 2**20:.1f}", flush=True)


def speed_part(repeats: int, tokens: int) -> None:
    print("\n3. Finch 12 x 768, vocabulary 65536, batch 1: tokens/s per turn")
    model = finch(12, 768, 65536, abstract=False)
    own = nnx.split(model)[1]  # the model's arrays before the decoder rebinds them to views of the stacks
    jitted = programs(model)
    views = rwkv_jax.decoder(model).params
    runs = {
        "decode before (loop, own arrays)": (jitted["before"][0], decoding.Params(own), 1),
        "decode now (loop, views)": (jitted["now"][0], views, 1),
        "decode, scan over the stacks": (jitted["scan"][0], views, 1),
        "prefill before (stacked in the call)": (jitted["before"][0], decoding.Params(own), PREFILL),
        "prefill now (stored stacks)": (jitted["now"][0], views, PREFILL),
    }
    state0 = model.init_state(1)
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, 65536, (1, PREFILL)), jnp.int32)
    for function, params, length in runs.values():
        jax.block_until_ready(function(params, prompt[:, :length], state0))  # compile
    for turn in range(repeats):
        for name, (function, params, length) in runs.items():
            calls = tokens if length == 1 else 1
            start, state = time.perf_counter(), state0
            for i in range(calls):
                logits, state = function(params, prompt[:, i : i + length], state)
            jax.block_until_ready(logits)
            print(f"turn {turn}: {name}: {calls * length / (time.perf_counter() - start):.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--depths", type=int, nargs="+", default=[12, 24, 61])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16, help="decode tokens per turn")
    args = parser.parse_args()
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
    if 1 in args.parts:
        depth_part(args.depths, args.width)
    if 2 in args.parts:
        memory_part()
    if 3 in args.parts:
        speed_part(args.repeats, args.tokens)


if __name__ == "__main__":
    main()
