r"""Inference speed of rwkv_jax against BlinkDL's ``rwkv`` package on the same weights, in one run.

    python experiments/bench.py                      # 12 x 768, vocabulary 65536 (the 0.1B shape): ~10 min
    python experiments/bench.py --small              # a smoke test (seconds)
    python experiments/bench.py --families finch --dtypes float32 --repeats 5
    python experiments/bench.py --training           # then training speed: experiments/bench_training.py

For each family (Finch, Goose) a model with random weights of the shape is written as an official ``.pth``
(:func:`rwkv_jax.save_official`); both stacks load that file, with float32 and with bfloat16 weights. Measured
per family and weight dtype: decode tokens/s at batch 1 and 16 (``rwkv_jax.decoder``'s step, one token
per call), prefill tokens/s of ``--prefill`` tokens (head on the last position only), compile time of each
program (the first call, as a model call runs it: the time includes one call), and the peak memory of
decoding: each stack in a fresh process loads the file and decodes 1, then ``4 x decode`` tokens at batch
1; the process's peak resident memory (``VmHWM``: imports, loading, compiling and decoding) after each
(flat in the number of tokens).
The ``rwkv`` package (when installed; it has no batch) runs decode at batch 1 and prefill, the two stacks
taking turns ``--repeats`` times (medians reported), and the next-token logits after the prefill are
compared (relative error). The decode bound is the bytes of weights read per token (every parameter but
the embedding, plus one embedding row) over this machine's memory bandwidth, measured in every turn
beside the decodes (the faster of a large numpy copy and XLA's float32 matrix-vector product of a 1 GiB
matrix, which reads it as a decode step reads its weights; the median over the turns); each decode
figure's share of it is printed. Also printed: what XLA:CPU does with a bfloat16 matrix-vector product of
the head's shape, and 85 chained 768 x 768 products (float32 weights in XLA, bfloat16 through the kernel)
(docs/speed.md). Writes ``--json`` and ``--plot``.
"""

import argparse
import importlib.util
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

FAMILIES = {"finch": ("RWKV6", dict(version="6")), "goose": ("RWKV7", {})}
PROGRAMS = ("decode1", "decode16", "prefill")
FULL = dict(n_layer=12, n_embd=768, vocab_size=65536, prefill=512, decode=32)
SMALL = dict(n_layer=2, n_embd=128, vocab_size=1024, prefill=16, decode=4)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="a tiny shape and few tokens (smoke test)")
    parser.add_argument("--families", default="finch,goose", help="comma list of: " + ", ".join(FAMILIES))
    parser.add_argument("--dtypes", default="float32,bfloat16", help="weight dtypes (load_official dtype=)")
    parser.add_argument("--repeats", type=int, default=3, help="turns per measurement (median)")
    parser.add_argument("--no-package", action="store_true", help="skip BlinkDL's rwkv package")
    parser.add_argument("--json", default="bench.json", help="where to write the figures")
    parser.add_argument("--plot", default="bench.png", help="where to draw them ('' for none)")
    parser.add_argument(
        "--training", action="store_true", help="then experiments/bench_training.py (--small with --small)"
    )
    parser.add_argument("--peak-worker", help=argparse.SUPPRESS)  # JSON spec: run decode_peak_worker
    args = parser.parse_args(argv)
    unknown = set(args.families.split(",")) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; known: {sorted(FAMILIES)}")
    return args


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class BandwidthProbe:
    """Memory bandwidth, bytes per second: a numpy copy of ``mib / 4`` MiB (read + write counted) and XLA's
    float32 product of a vector with a ``mib`` MiB matrix (the matrix read, as a decode step reads its
    weights). Called once per turn beside the decodes, so that a bound compares figures of the same
    moments of a shared machine."""

    def __init__(self, mib: int):
        import jax
        import jax.numpy as jnp

        self.jax = jax
        self.src = np.ones(mib * 2**16, np.float32)
        self.dst = np.empty_like(self.src)
        self.matrix = jnp.ones((mib * 8, 32768), jnp.float32)
        self.vector = jnp.ones((1, mib * 8), jnp.float32)
        self.product = jax.jit(jnp.matmul)
        self()  # warm-up: pages touched, the product compiled

    def __call__(self, repeats: int = 3) -> dict[str, float]:
        """``{"numpy copy": ..., "XLA mat-vec": ...}``, the best of ``repeats`` each."""
        copy = min(median_time(lambda: np.copyto(self.dst, self.src), 1) for _ in range(repeats))
        read = min(
            median_time(lambda: self.jax.block_until_ready(self.product(self.vector, self.matrix)), 1)
            for _ in range(repeats)
        )
        return {"numpy copy": 2 * self.src.nbytes / copy, "XLA mat-vec": self.matrix.nbytes / read}


def matvec_table(rows: int, cols: int) -> dict[str, float]:
    """Milliseconds of ``x [1, rows] @ W [rows, cols]`` in XLA:CPU: float32 weights, bfloat16 weights (XLA
    converts the whole matrix to float32 in a fresh buffer first), and the bfloat16 bits read as uint32
    pairs in column blocks (no bfloat16 op for XLA to widen; the fastest XLA form found), and the FFI
    kernel that the jitted step uses (:mod:`rwkv_jax.lowp_matmul`), where it builds."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from rwkv_jax import lowp_matmul

    def pairs(x, packed):  # packed: uint32 [rows, cols / 2] holding two bfloat16 weights each
        def block(j, out):
            part = lax.dynamic_slice_in_dim(packed, j * 512, 512, axis=1)
            low = lax.bitcast_convert_type(part << 16, jnp.float32)
            high = lax.bitcast_convert_type(part & jnp.uint32(0xFFFF0000), jnp.float32)
            y = jnp.stack([x @ low, x @ high], -1).reshape(1, -1)
            return lax.dynamic_update_slice_in_dim(out, y, j * 1024, axis=1)

        return lax.fori_loop(0, cols // 1024, block, jnp.zeros((1, cols), jnp.float32))

    x = jnp.ones((1, rows), jnp.float32)
    w32 = jax.random.normal(jax.random.key(0), (rows, cols), jnp.float32)
    w16 = w32.astype(jnp.bfloat16)
    packed = jnp.asarray(np.asarray(w16).view(np.uint32))
    forms = {
        "float32 weights": (jax.jit(lambda x, w: x @ w), w32),
        "bfloat16 weights, x @ w.astype(f32)": (jax.jit(lambda x, w: x @ w.astype(jnp.float32)), w16),
        "bfloat16 weights, preferred_element_type=f32": (
            jax.jit(lambda x, w: jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)),
            w16,
        ),
        "bfloat16 bits as uint32 pairs, 1024-column blocks": (jax.jit(pairs), packed),
    }
    if lowp_matmul.available(jnp.bfloat16):
        forms["bfloat16 weights, rwkv_jax.lowp_matmul (FFI kernel)"] = (jax.jit(lowp_matmul.matmul), w16)
    result = {}
    for name, (fn, w) in forms.items():
        jax.block_until_ready(fn(x, w))
        result[name] = 1e3 * median_time(lambda fn=fn, w=w: jax.block_until_ready(fn(x, w)), 7)
    return result


def chain_table(size: int, count: int, repeats: int = 15) -> dict[str, float]:
    """Microseconds per product of ``count`` chained ``h = tanh(h [1, size] @ W_i [size, size])`` over
    distinct matrices (a decode step's small projections, each read from memory): float32 weights in XLA,
    and bfloat16 weights through the FFI kernel (:mod:`rwkv_jax.lowp_matmul`, where it builds), the forms
    taking turns (docs/speed.md, "Short rows of the weights in memory order")."""
    import jax
    import jax.numpy as jnp

    from rwkv_jax import lowp_matmul

    w32 = [w / size**0.5 for w in jax.random.normal(jax.random.key(1), (count, size, size), jnp.float32)]
    forms = {"float32 weights (XLA)": (jnp.matmul, w32)}
    if lowp_matmul.available(jnp.bfloat16):
        w16 = [w.astype(jnp.bfloat16) for w in w32]
        forms["bfloat16 weights, rwkv_jax.lowp_matmul (FFI kernel)"] = (lowp_matmul.matmul, w16)

    def chain(h, weights, product):
        for w in weights:
            h = jnp.tanh(product(h, w))
        return h

    run = jax.jit(chain, static_argnames="product")
    x = jnp.ones((1, size), jnp.float32)

    def seconds(product, weights) -> float:
        return median_time(lambda: jax.block_until_ready(run(x, weights, product)), 1)

    for product, weights in forms.values():  # compiles each form
        seconds(product, weights)
    times = {name: [] for name in forms}
    for _ in range(repeats):
        for name, (product, weights) in forms.items():
            times[name].append(seconds(product, weights))
    return {name: 1e6 * statistics.median(t) / count for name, t in times.items()}


def write_model(family: str, shape: dict, directory: str, init: str = "plain") -> str:
    """A random-weights model of ``family`` and ``shape`` (``n_layer``, ``n_embd``, ``vocab_size``) with the
    initialisation ``init`` (the family config's field), written as an official .pth; returns the path."""
    from flax import nnx

    import rwkv_jax

    name, fields = FAMILIES[family]
    config = getattr(rwkv_jax, f"{name}Config")(
        **fields,
        n_layer=shape["n_layer"],
        n_embd=shape["n_embd"],
        vocab_size=shape["vocab_size"],
        init=init,
    )
    path = os.path.join(directory, f"{family}_{shape['vocab_size']}.pth")
    rwkv_jax.save_official(getattr(rwkv_jax, name)(config, rngs=nnx.Rngs(0)), path)
    return path


class JaxRunner:
    """rwkv_jax through its public jitted step, loaded from the official file with ``dtype``."""

    def __init__(self, path: str, dtype: str, shape: dict, programs: tuple[str, ...] = PROGRAMS):
        import jax
        import jax.numpy as jnp

        import rwkv_jax

        self.jax, self.shape = jax, shape
        self.model = rwkv_jax.load_official(path, dtype=dtype)
        self.decoder = rwkv_jax.decoder(self.model)
        # What one decode step reads: every parameter of the per-layer layout (``params.layers``; on CPU the
        # float32 working copies of bfloat16 weights, rwkv_jax.decoding) but the embedding, of which one row.
        emb = jax.tree.leaves(self.decoder.params.layers["emb"])[0]
        read = sum(p.nbytes for p in jax.tree.leaves(self.decoder.params.layers))
        self.bytes_per_step = read - emb.nbytes + emb.nbytes // emb.shape[0]
        self.stored_bytes = sum(p.nbytes for p in jax.tree.leaves(self.model))
        self.prompt = jnp.asarray(
            np.random.default_rng(1).integers(1, shape["vocab_size"], (1, shape["prefill"]))
        )
        self.compile_s = {}
        for batch in [int(name[len("decode") :]) for name in programs if name.startswith("decode")]:
            self._compile(f"decode{batch}", jnp.ones((batch, 1), jnp.int32), batch, False)
        if "prefill" in programs:
            self._compile("prefill", self.prompt.astype(jnp.int32), 1, True)

    def _compile(self, name: str, tokens: Any, batch: int, last_only: bool) -> None:
        """Compiles program ``name`` by a first call of the public step, as a model call runs it (on CPU the
        layer-by-layer programs of rwkv_jax.layerwise where the family has them; the time includes the
        call)."""
        start = time.perf_counter()
        state = self.decoder.init_state(batch)
        self.jax.block_until_ready(self.decoder.step(self.decoder.params, tokens, state, last_only=last_only))
        self.compile_s[name] = time.perf_counter() - start

    def decode(self, batch: int) -> None:
        import jax.numpy as jnp

        step, state = self.decoder.step, self.decoder.init_state(batch)
        tokens = jnp.ones((batch, 1), jnp.int32)
        for _ in range(self.shape["decode"]):
            logits, state = step(self.decoder.params, tokens, state)
        self.jax.block_until_ready(logits)

    def prefill(self) -> np.ndarray:
        logits, _ = self.decoder.step(
            self.decoder.params, self.prompt.astype(np.int32), self.decoder.init_state(1), last_only=True
        )
        return np.asarray(logits[0, -1])


def blinkdl_module(goose: bool) -> Any:
    """BlinkDL's ``rwkv.model``: it picks RWKV-7 at import when RWKV_V7_ON=1, so Goose gets its own copy.

    Its constructor reads ``os.environ["RWKV_CUDA_ON"]`` (a KeyError when unset): "0", the CPU, unless set.
    """
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    if not goose:
        import rwkv.model

        return rwkv.model
    spec = importlib.util.find_spec("rwkv.model")
    os.environ["RWKV_V7_ON"] = "1"
    try:
        copy = importlib.util.spec_from_file_location("rwkv_model_v7", spec.origin)
        module = importlib.util.module_from_spec(copy)
        copy.loader.exec_module(module)
    finally:
        del os.environ["RWKV_V7_ON"]
    return module


class PackageRunner:
    """BlinkDL's ``rwkv`` package (torch, strategy ``cpu fp32`` / ``cpu bf16``) on the same file."""

    def __init__(self, path: str, dtype: str, shape: dict, family: str, prompt: np.ndarray):
        import torch

        self.torch, self.shape = torch, shape
        module = blinkdl_module(family == "goose")
        strategy = "cpu fp32" if dtype == "float32" else "cpu bf16"
        name = path[: -len(".pth")] if family == "goose" else path  # RWKV_x070 appends .pth itself
        self.model = (
            module.RWKV(name, strategy) if family == "goose" else module.RWKV(name, strategy, verbose=False)
        )
        self.prompt = [int(t) for t in prompt[0]]

    def decode(self, batch: int) -> None:
        del batch  # the package decodes one sequence
        with self.torch.no_grad():
            state = None
            for _ in range(self.shape["decode"]):
                _, state = self.model.forward([1], state)

    def prefill(self) -> np.ndarray:
        with self.torch.no_grad():
            logits, _ = self.model.forward(self.prompt, None)
        return logits.float().numpy()


def decode_peak_worker(spec: dict) -> None:
    """In a fresh process: ``spec["stack"]`` ("jax" or "rwkv") loads ``spec["path"]`` and decodes 1, then
    ``spec["tokens"]`` tokens one at a time (batch 1); prints ``{"peak_mib": [after 1, after tokens]}``, the
    process's peak resident memory (:func:`peak_resident_mib`) after each."""
    shape = dict(spec["shape"])
    if spec["stack"] == "jax":
        runner: Any = JaxRunner(spec["path"], spec["dtype"], shape, programs=("decode1",))
    else:
        prompt = np.ones((1, 1), np.int64)
        runner = PackageRunner(spec["path"], spec["dtype"], shape, spec["family"], prompt)
    peaks = []
    for tokens in (1, spec["tokens"]):
        runner.shape = {**shape, "decode": tokens}
        runner.decode(1)
        peaks.append(peak_resident_mib())
    print(json.dumps({"peak_mib": peaks}), flush=True)


def peak_resident_mib() -> float:
    """This process's peak resident memory, MiB (``VmHWM``: see :func:`process_status_kib`)."""
    from rwkv_jax.host_memory import process_status_kib

    return process_status_kib("VmHWM") / 1024


def decode_peaks(stack: str, family: str, dtype: str, path: str, shape: dict) -> list[float]:
    """``decode_peak_worker``'s figures (MiB after 1 and ``4 x decode`` tokens) for one stack."""
    spec = dict(stack=stack, family=family, dtype=dtype, path=path, shape=shape, tokens=4 * shape["decode"])
    command = [sys.executable, os.path.abspath(__file__), "--peak-worker", json.dumps(spec)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def measure(
    family: str, dtype: str, path: str, shape: dict, args: argparse.Namespace, probe: BandwidthProbe
) -> dict:
    """Every figure of one family and weight dtype, the stacks taking turns."""
    jax_runner = JaxRunner(path, dtype, shape)
    package = (
        None
        if args.no_package or not has_package()
        else PackageRunner(path, dtype, shape, family, np.asarray(jax_runner.prompt))
    )
    runners = {"jax": jax_runner, **({"rwkv": package} if package else {})}
    for runner in runners.values():  # warm-up (the package's TorchScript compiles on first use)
        runner.decode(1), runner.prefill()
    times: dict[str, list[float]] = {}
    bandwidths = []
    for _ in range(args.repeats):
        bandwidths.append(max(probe().values()))  # the fastest the memory streamed in this turn
        for name, runner in runners.items():
            for batch in (1, 16) if name == "jax" else (1,):
                times.setdefault(f"{name} decode{batch}", []).append(
                    median_time(lambda r=runner, b=batch: r.decode(b), 1)
                )
            times.setdefault(f"{name} prefill", []).append(median_time(runner.prefill, 1))
    med = {key: statistics.median(value) for key, value in times.items()}
    row = {
        "family": family,
        "dtype": dtype,
        "decode1_tok_s": shape["decode"] / med["jax decode1"],
        "decode16_tok_s": 16 * shape["decode"] / med["jax decode16"],
        "prefill_tok_s": shape["prefill"] / med["jax prefill"],
        "compile_s": jax_runner.compile_s,
        "weight_mib_read_per_step": jax_runner.bytes_per_step / 2**20,
        "weight_mib_stored": jax_runner.stored_bytes / 2**20,
        "bandwidth_bytes_s": statistics.median(bandwidths),
        "decode_bound_tok_s": statistics.median(bandwidths) / jax_runner.bytes_per_step,
    }
    row["decode1_share_of_bound"] = row["decode1_tok_s"] / row["decode_bound_tok_s"]
    row["decode16_steps_share_of_bound"] = row["decode16_tok_s"] / 16 / row["decode_bound_tok_s"]
    stacks = ("jax", "rwkv") if package else ("jax",)
    for stack, prefix in zip(stacks, ("", "rwkv_"), strict=False):
        first, last = decode_peaks(stack, family, dtype, path, shape)
        row[f"{prefix}decode_peak_first_mib"], row[f"{prefix}decode_peak_mib"] = first, last
    if package:
        row["decode_peak_ratio"] = row["decode_peak_mib"] / row["rwkv_decode_peak_mib"]
        ours, theirs = jax_runner.prefill(), package.prefill()
        row["rwkv_decode1_tok_s"] = shape["decode"] / med["rwkv decode1"]
        row["rwkv_prefill_tok_s"] = shape["prefill"] / med["rwkv prefill"]
        row["decode1_ratio"] = row["decode1_tok_s"] / row["rwkv_decode1_tok_s"]
        row["prefill_ratio"] = row["prefill_tok_s"] / row["rwkv_prefill_tok_s"]
        row["logits_relative_error"] = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
    return row


def has_package() -> bool:
    return importlib.util.find_spec("rwkv") is not None and importlib.util.find_spec("torch") is not None


def print_table(rows: list[dict], shape: dict) -> None:
    columns = [
        ("family", "family", "{}"), ("weights", "dtype", "{}"),
        ("decode B=1 tok/s", "decode1_tok_s", "{:.1f}"), ("rwkv pkg", "rwkv_decode1_tok_s", "{:.1f}"),
        ("ratio", "decode1_ratio", "{:.2f}x"), ("share of bound", "decode1_share_of_bound", "{:.0%}"),
        ("decode B=16 tok/s", "decode16_tok_s", "{:.1f}"), ("prefill tok/s", "prefill_tok_s", "{:.1f}"),
        ("rwkv pkg", "rwkv_prefill_tok_s", "{:.1f}"), ("ratio", "prefill_ratio", "{:.2f}x"),
        ("logits rel. err.", "logits_relative_error", "{:.1e}"),
        ("decode peak MiB", "decode_peak_mib", "{:.0f}"), ("rwkv pkg", "rwkv_decode_peak_mib", "{:.0f}"),
        ("ratio", "decode_peak_ratio", "{:.2f}x"),
    ]  # fmt: skip
    print("| " + " | ".join(title for title, _, _ in columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in rows:
        cells = [fmt.format(row[key]) if key in row else "-" for _, key, fmt in columns]
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        compile_s = ", ".join(f"{k} {v:.1f} s" for k, v in row["compile_s"].items())
        print(
            f"{row['family']} {row['dtype']}: compile {compile_s}; "
            f"{row['weight_mib_stored']:.0f} MiB stored, {row['weight_mib_read_per_step']:.0f} MiB read per "
            f"step, bound {row['decode_bound_tok_s']:.1f} steps/s "
            f"({row['bandwidth_bytes_s'] / 1e9:.1f} GB/s); decode peak after 1 / "
            f"{4 * shape['decode']} tokens {row['decode_peak_first_mib']:.0f} / "
            f"{row['decode_peak_mib']:.0f} MiB"
            + (
                f" (rwkv pkg {row['rwkv_decode_peak_first_mib']:.0f} / {row['rwkv_decode_peak_mib']:.0f})"
                if "rwkv_decode_peak_mib" in row
                else ""
            )
        )


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [
        ("decode1_tok_s", "decode B=1 (tokens/s)"),
        ("decode16_tok_s", "decode B=16 (tokens/s)"),
        ("prefill_tok_s", "prefill (tokens/s)"),
        ("decode_peak_mib", "decode peak memory (MiB)"),
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.5))
    labels = [f"{r['family']}\n{r['dtype']}" for r in rows]
    for ax, (key, title) in zip(axes, metrics, strict=True):
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r[key] for r in rows], 0.4, label="rwkv_jax")
        package_key = f"rwkv_{key}" if key != "decode16_tok_s" else None
        if package_key and any(package_key in r for r in rows):
            ax.bar(x + 0.2, [r.get(package_key, 0) for r in rows], 0.4, label="rwkv package")
        ax.set_xticks(x, labels)
        ax.set_title(title)
    handles, names = axes[0].get_legend_handles_labels()  # one legend for all: inside, it hid bars
    fig.legend(handles, names, loc="upper center", ncol=len(names))
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.peak_worker:
        decode_peak_worker(json.loads(args.peak_worker))
        return 0
    shape = SMALL if args.small else FULL
    probe = BandwidthProbe(64 if args.small else 1024)
    bandwidths = probe(repeats=5)
    print("memory bandwidth: " + ", ".join(f"{k} {v / 1e9:.1f} GB/s" for k, v in bandwidths.items()))
    if not args.small:
        print("XLA:CPU matrix-vector product, head shape 768 x 65536 (ms):")
        for name, ms in matvec_table(768, 65536).items():
            print(f"  {name}: {ms:.1f}")
        print("85 chained matrix-vector products 768 x 768, distinct matrices (us per product):")
        for name, us in chain_table(768, 85).items():
            print(f"  {name}: {us:.1f}")
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for family in args.families.split(","):
            path = write_model(family, shape, directory)
            for dtype in args.dtypes.split(","):
                rows.append(measure(family, dtype, path, shape, args, probe))
    print_table(rows, shape)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(
            {"shape": shape, "bandwidths_bytes_s": bandwidths, "rows": rows},
            f,
            indent=1,
        )
    os.replace(tmp, args.json)
    if args.plot:
        plot(rows, args.plot)
    if args.training:  # its own worker processes (peak memory per configuration): see its docstring
        training = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_training.py")]
        subprocess.run([sys.executable, *training, *(["--small"] if args.small else [])], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
