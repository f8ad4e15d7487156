"""Compile time of a training step (forward + backward + AdamW) against depth, blocks looped vs scanned.

Usage: ``python experiments/bench_compile.py [--layers 12 24 61] [--presets finch-tiny goose-tiny]``

Each preset is built at 768 channels, a 256-token vocabulary and 16 tokens a row (abstract parameters:
nothing is initialised), lowered and compiled once per depth with ``LanguageModel.scan_layers`` off (a
Python loop over the blocks, parameters per layer) and on (the layers scanned, their parameters stored
stacked: :mod:`rwkv_jax.models.layer_stack`), taking turns; prints a Markdown table of seconds to lower +
compile and the ratio of the deepest to the shallowest. ``--no-loop`` skips the loop (slow at depth).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rwkv_jax.presets import get_preset
from rwkv_jax.training.model import ModelFns
from rwkv_jax.training.step import make_train_step

WIDTH = dict(n_embd=768, vocab_size=256, dtype="float32")
BATCH, STEPS = 1, 16


def compile_seconds(preset: str, n_layer: int, scan: bool) -> float:
    """Seconds to lower and compile one AdamW training step of ``preset`` at ``n_layer`` layers: the train
    step of ``rwkv_jax.training.step`` on the parameters as training splits them (``ModelFns``: stacked
    where the layers are scanned)."""
    model = nnx.eval_shape(lambda: get_preset(preset).build(seed=0, n_layer=n_layer, **WIDTH))
    model.scan_layers = scan
    fns, params = ModelFns.split(model)
    tx = optax.adamw(1e-4)
    opt_state = jax.eval_shape(tx.init, params)
    batch = jax.ShapeDtypeStruct((BATCH, STEPS + 1), jnp.int32)
    start = time.perf_counter()
    jax.jit(make_train_step(fns, tx)).lower(params, opt_state, batch).compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 24, 61])
    parser.add_argument("--presets", nargs="+", default=["finch-tiny", "goose-tiny"])
    parser.add_argument("--no-loop", action="store_true", help="time the scanned layers only")
    args = parser.parse_args()
    print(f"| preset | layers | loop (s) | scan (s) |   ({jax.devices()[0].device_kind}, 768 wide)")
    print("|---|---|---|---|")
    for preset in args.presets:
        scanned = {}
        for n_layer in args.layers:
            loop = "" if args.no_loop else f"{compile_seconds(preset, n_layer, scan=False):.1f}"
            scanned[n_layer] = compile_seconds(preset, n_layer, scan=True)
            print(f"| {preset} | {n_layer} | {loop} | {scanned[n_layer]:.1f} |", flush=True)
        deep, shallow = scanned[max(args.layers)], scanned[min(args.layers)]
        print(f"| {preset} | scan {max(args.layers)} / {min(args.layers)} layers | | {deep / shallow:.2f} |")


if __name__ == "__main__":
    main()
