r"""Per-device memory and FLOPs of a sharded train step, compiled on fake CPU devices (nothing allocated).

    python experiments/memory_plan.py --config configs/world_rwkv7.py:size=goose-7b2 \
        --mesh data=1,fsdp=64 --seq_len 4096 --config.train.remat_blocks=True
    python experiments/memory_plan.py --table --config.train.remat_blocks=True   # the README's table

The model is built abstractly (``nnx.eval_shape``), the train step is lowered with ``jax.ShapeDtypeStruct``
inputs carrying the mesh's shardings and compiled by XLA:CPU for the fake devices. Printed per device:
parameters and optimiser state (the bytes of each array's shard under its NamedSharding), temporaries
(``compiled.memory_analysis().temp_size_in_bytes``: activations, gradients in flight, gathered weights,
workspace) and FLOPs per token, both XLA's count (``compiled.cost_analysis()``) and the analytic 6N (N: the
parameters a token meets, embedding excluded; the WKV recurrence is not counted). ``--config.a.b=value``
overrides any config field (as for experiments/train.py).

The whole model is compiled: its layers are one scan (stacked parameters), so compile time does not grow
with depth (about 15-40 s a plan for 64 or 256 fake devices here). ``--layers L`` instead compiles 1 and 2
layers and extrapolates linearly to L; those small models are not scanned, and their figure overstates the
scanned program's (Finch 3.1B, fsdp 64: 25.1 GiB extrapolated against 18.1 compiled; docs/pod_scale.md).
The batch is one sequence per batch shard (``data * fsdp`` sequences) unless ``--batch`` is given.
XLA:CPU's buffer assignment stands in for the accelerator's: the temporaries are an estimate, not a promise
(docs/pod_scale.md says how far to trust them). XLA's FLOP count undercounts a step whose segments run in a
loop (about a third of 6N at 4096 tokens in segments of 1024): take the analytic figure there.
"""

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=4,fsdp=16,tensor=1"`` -> {"data": 4, "fsdp": 16, "tensor": 1} (axes left out are 1)."""
    sizes = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise SystemExit(f"--mesh item {item!r}: expected axis=positive integer, e.g. data=4,fsdp=16")
        sizes[name.strip()] = int(value)
    return sizes


def plan(
    config_spec: str, overrides: list[str], mesh_sizes: dict[str, int], seq_len: int, batch: int, layers: int
) -> dict:
    """Compiles the sharded train step of ``config_spec`` (with the ``--config.a.b=value`` ``overrides``) with
    ``layers`` blocks; figures per device (bytes, FLOPs per token). Needs ``prod(mesh_sizes)`` devices (set
    before JAX is imported)."""
    import jax
    import numpy as np
    from flax import nnx

    from rwkv_jax import sharding
    from rwkv_jax.training.config import apply_overrides, load_config
    from rwkv_jax.training.model import ModelFns, build_model
    from rwkv_jax.training.optim import make_optimizer, weight_decay_mask
    from rwkv_jax.training.step import jit_train_step, optimizer_state_shardings, train_step_of

    config = load_config(config_spec)
    apply_overrides(config, overrides)
    unknown = set(mesh_sizes) - set(sharding.MESH_AXES)
    if unknown:
        raise SystemExit(f"--mesh axes {sorted(unknown)}: expected among {sharding.MESH_AXES}")
    config.model.n_layer = layers
    mesh = sharding.make_mesh(**{axis: mesh_sizes.get(axis, 1) for axis in sharding.MESH_AXES})
    rules = config.sharding_rules

    module = nnx.eval_shape(lambda: build_model(config.model, config.seed))
    module.remat_blocks = config.train.remat_blocks
    fns, params = ModelFns.split(module)
    tx, _ = make_optimizer(config.optim, config.train.steps, weight_decay_mask(fns.logical_axes, params, ()))
    param_sh = sharding.tree_shardings(fns.logical_axes, params, rules, mesh)
    opt_sh = optimizer_state_shardings(tx, params, param_sh, mesh)
    opt_state = jax.eval_shape(tx.init, params)
    batch_sh = sharding.batch_sharding(mesh, rules)

    def shaped(tree: object, shardings: object) -> object:
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

    def shard_bytes(tree: object, shardings: object) -> int:
        sizes = jax.tree.map(
            lambda x, s: math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize, tree, shardings
        )
        return sum(jax.tree.leaves(sizes))

    step = train_step_of(config, fns, tx)
    batch_arg = jax.ShapeDtypeStruct((batch, seq_len + 1), np.int32, sharding=batch_sh)
    jitted = jit_train_step(step, param_sh, opt_sh, batch_sh)
    compiled = jitted.lower(shaped(params, param_sh), shaped(opt_state, opt_sh), batch_arg).compile()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    tokens_per_device = batch * seq_len / mesh.size
    counted = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    embedding = math.prod(params["embed"]["embedding"].shape) if "embed" in params else 0
    return {
        "params": shard_bytes(params, param_sh),
        "optimizer": shard_bytes(opt_state, opt_sh),
        "temporaries": int(memory.temp_size_in_bytes),
        "xla_flops_per_token": float(cost.get("flops", 0.0)) / tokens_per_device,
        "analytic_flops_per_token": 6.0 * (counted - embedding),
        "parameter_count": counted,
    }


def extrapolate(one: dict, two: dict, layers: int) -> dict:
    """Each figure f(L) = f(1) + (L - 1) * (f(2) - f(1)): the blocks are identical."""
    return {key: one[key] + (layers - 1) * (two[key] - one[key]) for key in one}


def run_isolated(args: list[str], devices: int) -> dict:
    """This script in a fresh process with ``devices`` fake CPU devices (fixed at JAX's import); its JSON."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, __file__, "--json", *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        raise SystemExit(f"memory plan of {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


GIB = 2**30


def describe(figures: dict, note: str) -> str:
    """The per-device report of one plan."""
    total = figures["params"] + figures["optimizer"] + figures["temporaries"]
    return "\n".join(
        [
            f"parameters        {figures['params'] / GIB:9.3f} GiB per device "
            f"({figures['parameter_count']:,} in all)",
            f"optimiser state   {figures['optimizer'] / GIB:9.3f} GiB per device",
            f"temporaries       {figures['temporaries'] / GIB:9.3f} GiB per device (XLA memory analysis)",
            f"total             {total / GIB:9.3f} GiB per device",
            f"FLOPs per token   {figures['xla_flops_per_token']:.3e} (XLA cost analysis, train step)",
            f"                  {figures['analytic_flops_per_token']:.3e} (analytic 6N, WKV not counted)",
            note,
        ]
    )


# The README's table: the models (config, its own overrides), the candidate meshes per device count. The World
# configs train 4096-token windows in segments of 1024; the Pile config's RWKV-4 trains 1024-token windows
# whole, so at 4096 it gets the same segments.
RWKV4_AT_4096 = ["--config.data.seq_len=4096", "--config.segments.length=1024"]
TABLE_MODELS = [
    ("configs/world_rwkv6.py:size=finch-3b1", []),
    ("configs/world_rwkv6.py:size=eagle-7b", []),
    ("configs/pile_rwkv4.py:size=rwkv4-14b", RWKV4_AT_4096),
    ("configs/world_rwkv7.py:size=goose-7b2", []),
    ("configs/world_rwkv7.py:size=goose-13b3", []),
]
TABLE_MESHES = {64: ["data=8,fsdp=8", "data=1,fsdp=64"], 256: ["data=32,fsdp=8", "data=4,fsdp=64"]}


def total_gib(figures: dict) -> float:
    """Parameters + optimiser state + temporaries per device, GiB."""
    return (figures["params"] + figures["optimizer"] + figures["temporaries"]) / GIB


def table_rows(seq_len: int, overrides: list[str]) -> list[str]:
    """One Markdown row per (model, device count): each candidate mesh's GiB per device, the recommended mesh
    (the smallest total) and whether it fits 16 and 32 GiB. ``overrides``: ``--config.a.b=value`` for all."""
    rows = [
        "| model | devices | GiB per device: total (temporaries) | recommended | fits 16 GiB | fits 32 GiB |",
        "|---|---|---|---|---|---|",
    ]
    for spec, own in TABLE_MODELS:
        for devices, meshes in TABLE_MESHES.items():
            common = ["--config", spec, "--seq_len", str(seq_len), *own, *overrides]
            figures = {mesh: run_isolated([*common, "--mesh", mesh], devices) for mesh in meshes}
            best = min(meshes, key=lambda mesh: total_gib(figures[mesh]))
            cells = ", ".join(
                f"{mesh}: {total_gib(f):.1f} ({f['temporaries'] / GIB:.1f})" for mesh, f in figures.items()
            )
            fits = " | ".join("yes" if total_gib(figures[best]) <= limit else "no" for limit in (16, 32))
            rows.append(f"| {spec.split('=')[-1]} | {devices} | {cells} | {best} | {fits} |")
            print(rows[-1], flush=True)
    return rows


def load_layers(spec: str) -> int:
    """The number of blocks of the config's model (no JAX devices needed)."""
    from rwkv_jax.training.config import load_config

    return load_config(spec).model.n_layer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="configs/<name>.py[:arg]")
    parser.add_argument("--mesh", default="", help="data=..,fsdp=..,tensor=.. (axes left out: 1)")
    parser.add_argument("--devices", type=int, default=0, help="fake devices (default: the mesh's product)")
    parser.add_argument("--seq_len", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=0, help="sequences per step (default: data * fsdp)")
    parser.add_argument("--layers", type=int, default=0, help="extrapolate from 1- and 2-layer compiles to L")
    parser.add_argument("--table", action="store_true", help="the README's table (every model, mesh)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the isolated worker
    args, overrides = parser.parse_known_args()
    unknown = [item for item in overrides if not item.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognised arguments {unknown} (config overrides: --config.a.b=value)")
    if args.table:
        print("\n".join(["", *table_rows(args.seq_len, overrides)]))
        return
    if not args.config or not args.mesh:
        raise SystemExit("--config and --mesh are required (or --table)")
    sizes = parse_mesh(args.mesh)
    devices = math.prod(sizes.values())
    if args.devices and args.devices != devices:
        raise SystemExit(f"--devices {args.devices}: the mesh {sizes} needs exactly {devices}")
    batch = args.batch or sizes.get("data", 1) * sizes.get("fsdp", 1)
    if not args.json:
        forwarded = [a for a in sys.argv[1:] if a not in ("--json",)]
        figures = run_isolated(forwarded, devices)
        note = f"mesh {sizes}, {batch} x {args.seq_len} tokens per step, config {args.config}"
        if args.layers:
            note += f"; extrapolated linearly to {args.layers} layers from 1- and 2-layer compiles"
        print(describe(figures, note))
        return
    if args.layers:
        one, two = (plan(args.config, overrides, sizes, args.seq_len, batch, n) for n in (1, 2))
        figures = extrapolate(one, two, args.layers)
    else:
        figures = plan(args.config, overrides, sizes, args.seq_len, batch, load_layers(args.config))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
