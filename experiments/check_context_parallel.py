"""Context parallelism against one device: loss and parameter gradients of Finch and Goose, fake CPU devices.

For each family and mesh ``data x fsdp x context`` the loss (mean next-token cross entropy) and every
parameter gradient of the sharded, jitted step are compared with one device (relative error over each
tensor, float32), and the step's XLA temporary bytes per device (``memory_analysis``) are printed with
the ratio to one device. First the WKV recurrences alone, split over ``context``, against their float64
references (decays near 0 and 1 at shard edges).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/check_context_parallel.py
    ... --meshes 1x1x2 --seq-len 64   (the small version the test runs)
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    raise SystemExit("set XLA_FLAGS=--xla_force_host_platform_device_count=8 before running (fake devices)")

import jax
import jax.numpy as jnp
import numpy as np

from rwkv_jax.numerics import relative_error
from rwkv_jax.sharding import make_mesh, sequence_sharding, tree_shardings
from rwkv_jax.training.config import default_config, model_section
from rwkv_jax.training.loss import token_nll
from rwkv_jax.training.model import ModelFns, build_model
from rwkv_jax.training.step import under_mesh
from rwkv_jax.wkv.v6 import wkv6, wkv6_reference
from rwkv_jax.wkv.v7 import wkv7, wkv7_reference

jax.config.update("jax_enable_x64", True)  # the float64 references

MESHES = ("1x1x2", "1x1x4", "1x1x8", "2x1x4", "1x2x4", "2x2x2")


def loss_and_grads(fns: ModelFns, mesh: Any, rules: Any, params: Any, tokens: np.ndarray) -> tuple:
    """Loss, gradients, the compiled step's temporary bytes per device on ``mesh`` and whether the WKV
    split its time axis over ``context``."""

    def objective(params: Any, inputs: Any, targets: Any) -> Any:
        logits, _ = fns.apply(params, inputs, None)
        return token_nll(logits, targets).mean()

    param_sh = tree_shardings(fns.logical_axes, params, rules, mesh)
    step = jax.jit(
        under_mesh(jax.value_and_grad(objective), mesh),
        in_shardings=(param_sh, *[sequence_sharding(mesh, rules)] * 2),
    )
    traced = step.trace(params, tokens[:, :-1], tokens[:, 1:])
    compiled = traced.lower().compile()
    loss, grads = compiled(params, tokens[:, :-1], tokens[:, 1:])
    split = "shard_map" in str(traced.jaxpr)  # the WKV ran under shard_map over context
    return float(loss), grads, compiled.memory_analysis().temp_size_in_bytes, split


def wkv_inputs(batch: int = 2, length: int = 64, heads: int = 2, size: int = 8) -> dict[str, tuple]:
    """Float64 inputs of WKV-6 and WKV-7 with an initial state; decays of exp(-1e-6) (near 1) over the first
    8 tokens and exp(-30) (near 0) over the next 8, so that shard edges fall inside both."""
    rng = np.random.default_rng(0)

    def normal(*shape: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal(shape))

    shape = (batch, length, heads, size)
    r, k, v = normal(*shape), normal(*shape), normal(*shape)
    w_log = (-jnp.exp(normal(*shape))).at[:, :8].set(-1e-6).at[:, 8:16].set(-30.0)
    kk = normal(*shape)
    kk = kk / jnp.linalg.norm(kk, axis=-1, keepdims=True)
    state = normal(batch, heads, size, size)
    return {
        "WKV-6": (wkv6, wkv6_reference, (r, k, v, w_log, normal(heads, size), state)),
        "WKV-7": (
            wkv7,
            wkv7_reference,
            (r, k, v, 0.1 * w_log, -kk, kk * jax.nn.sigmoid(normal(*shape)), state),
        ),
    }


def check_wkv(contexts: list[int]) -> float:
    """The chunked float32 forms split over ``context`` against the float64 reference (outputs, final
    state); prints one row per recurrence and context; returns the worst relative error."""
    worst = 0.0
    for name, (form, reference, args) in wkv_inputs().items():
        y_64, state_64 = reference(*args)
        for context in contexts:
            mesh = make_mesh(8 // context, 1, 1, context=context)
            with jax.set_mesh(mesh):
                y, state = jax.jit(lambda *a, form=form: form(*a, impl="chunked", chunk_size=8))(*args)
            errors = float(relative_error(y, y_64)), float(relative_error(state, state_64))
            worst = max(worst, *errors) if np.isfinite(errors).all() else np.inf
            print(f"{name} context {context}: y {errors[0]:.1e}, final state {errors[1]:.1e} vs float64")
    return worst


def check(family: str, meshes: list[str], seq_len: int, batch: int) -> float:
    """Prints one row per mesh; returns the worst relative error seen."""
    config = default_config()
    config.model = model_section(
        family, n_layer=2, n_embd=64, head_size=16, vocab_size=256, dtype="float32", chunk_size=8
    )
    fns, params = ModelFns.split(build_model(config.model, seed=0))
    # The official init zeroes the output projections, which would cut every gradient that flows back
    # through the WKV: move every parameter off it.
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(p.dtype), params)
    rules = config.sharding_rules
    tokens = np.random.default_rng(0).integers(0, 256, (batch, seq_len + 1), dtype=np.int32)
    one = make_mesh(1, 1, 1, jax.devices()[:1])
    loss_1, grads_1, temp_1, _ = loss_and_grads(fns, one, rules, params, tokens)
    worst = 0.0
    for name in meshes:
        data, fsdp, context = map(int, name.split("x"))
        devices = jax.devices()[: data * fsdp * context]
        mesh = make_mesh(data, fsdp, 1, devices, context=context)
        loss, grads, temp, split = loss_and_grads(fns, mesh, rules, params, tokens)
        if split != (context > 1):
            raise SystemExit(
                f"{name}: the WKV {'ran' if split else 'did not run'} under shard_map over context"
            )
        loss_error = abs(loss - loss_1) / abs(loss_1)
        errors = jax.tree.map(lambda a, b: float(relative_error(a, b)), grads, grads_1)
        where, grad_error = max(jax.tree.leaves_with_path(errors), key=lambda pair: pair[1])
        worst = max(worst, loss_error, grad_error) if np.isfinite([loss_error, grad_error]).all() else np.inf
        print(
            f"{family} data x fsdp x context = {name}: loss rel. error {loss_error:.1e}, worst gradient "
            f"rel. error {grad_error:.1e} ({jax.tree_util.keystr(where)}), "
            f"temporaries {temp / 2**20:.2f} MiB/device "
            f"({temp / temp_1:.3f}x one device's {temp_1 / 2**20:.2f} MiB)",
            flush=True,
        )
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=["rwkv6", "rwkv7"])
    parser.add_argument("--meshes", nargs="+", default=list(MESHES), help="data x fsdp x context")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--wkv-contexts", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args()
    print(f"worst WKV relative error vs float64 {check_wkv(args.wkv_contexts):.1e}")
    worst = max(check(family, args.meshes, args.seq_len, args.batch) for family in args.families)
    print(f"worst relative error {worst:.1e}")


if __name__ == "__main__":
    main()
