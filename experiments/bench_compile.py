"""Compile time of a training step (forward + backward + AdamW) against depth, blocks looped vs scanned.

Usage: ``python experiments/bench_compile.py [--layers 12 24 61] [--presets finch-tiny goose-tiny]``

Each preset is built at 768 channels, a 256-token vocabulary and 16 tokens a row (abstract parameters:
nothing is initialised), lowered and compiled once per depth with ``LanguageModel.scan_layers`` off (a
Python loop over the blocks) and on (:mod:`rwkv_jax.models.layer_scan`), taking turns; prints a Markdown
table of seconds to lower + compile and the ratio of the deepest to the shallowest.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rwkv_jax.presets import get_preset

WIDTH = dict(n_embd=768, vocab_size=256, dtype="float32")
BATCH, STEPS = 1, 16


def compile_seconds(preset: str, n_layer: int, scan: bool) -> float:
    """Seconds to lower and compile one AdamW training step of ``preset`` at ``n_layer`` layers."""
    model = nnx.eval_shape(lambda: get_preset(preset).build(seed=0, n_layer=n_layer, **WIDTH))
    model.scan_layers = scan
    graphdef, params = nnx.split(model)
    tx = optax.adamw(1e-4)
    opt_state = jax.eval_shape(tx.init, params)
    tokens = jax.ShapeDtypeStruct((BATCH, STEPS + 1), jnp.int32)

    def step(params, opt_state, tokens):
        def loss(params):
            logits, _ = nnx.merge(graphdef, params)(tokens[:, :-1])
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1))

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    start = time.perf_counter()
    jax.jit(step).lower(params, opt_state, tokens).compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 24, 61])
    parser.add_argument("--presets", nargs="+", default=["finch-tiny", "goose-tiny"])
    args = parser.parse_args()
    print(f"| preset | layers | loop (s) | scan (s) |   ({jax.devices()[0].device_kind}, 768 wide)")
    print("|---|---|---|---|")
    for preset in args.presets:
        scanned = {}
        for n_layer in args.layers:
            loop = compile_seconds(preset, n_layer, scan=False)
            scanned[n_layer] = compile_seconds(preset, n_layer, scan=True)
            print(f"| {preset} | {n_layer} | {loop:.1f} | {scanned[n_layer]:.1f} |", flush=True)
        deep, shallow = scanned[max(args.layers)], scanned[min(args.layers)]
        print(f"| {preset} | scan {max(args.layers)} / {min(args.layers)} layers | | {deep / shallow:.2f} |")


if __name__ == "__main__":
    main()
