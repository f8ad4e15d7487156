"""Times every WKV form of every family, forward and forward+backward, against FLOP and byte counts.

    python experiments/bench_kernels.py                      # every family, shapes sized for the backend
    python experiments/bench_kernels.py --families rwkv6 --length 4096 --batch 8 --heads 32 --repeats 20

Each timing is the median of ``--repeats`` calls of a jitted function after one warm-up call (compilation
excluded): "fwd" is the form itself (through the family's WKV table, as the models call it), "fwd+bwd" is
``jax.value_and_grad`` of a scalar loss of y and the final state with respect to every input and the initial
state. Inputs are :func:`rwkv_jax.numerics.make_inputs` ("mixed" decays where a family has them). On GPU/TPU
the Pallas form runs the real kernels; on CPU it runs in the interpreter, at ``T <= --pallas-max-length``
only (longer: skipped, said so). A scan form that materialises a state per token is skipped when that exceeds
``--scan-max-bytes``.

Printed: milliseconds, achieved GFLOP/s and GB/s against the counts below, and the arithmetic intensity
(FLOP per byte): compare with the device's peak FLOP/s and bandwidth to see how close each form is to its
roofline. Counts (an exp counts as one FLOP; the backward pass is counted as twice the forward, so
fwd+bwd = 3 x forward FLOPs).

FLOPs, forward, with ``C = H * N`` for WKV-4 and c the chunk size:

- WKV-4, every form: 24 per token and channel: the output (running max, two exponentials, two
  multiply-adds for num and den, a division: 12) and the state update (the same pattern: 12).
  ``B * T * C * 24``. The associative scan does about twice the work of the sequential scan; not counted.
- WKV-6 recurrent and scan: per token and head ``7 N^2``: ``k v^T`` (N^2), ``u k v^T + S`` (2 N^2),
  ``r^T (...)`` (2 N^2), ``e^w S + k v^T`` (2 N^2). ``B * T * H * 7 N^2``. The scan composes about 2T
  maps of 2 N^2 each and reads its states back (another 3 N^2 per token): counted as ``B * T * H * 9 N^2``.
- WKV-6 chunked and Pallas (dense chunk matmuls as executed, masks included): per head and chunk the
  intra-chunk matmuls ``(r k^T) v``: ``2 c^2 N * 2``; the state terms ``r S`` and ``k^T v``: ``2 c N^2 * 2``;
  the decay factors (exponentials and scalings of r, k, the pairwise decays of the 16-token diagonal
  blocks): about ``c N (6 + 2 * 16)``. ``B * H * (T / c) * (4 c^2 N + 4 c N^2 + 38 c N)``.
- WKV-7, every form: the recurrence's own work, per token and head ``9 N^2``: ``S a`` (2 N^2), the decay
  ``S e^w`` (N^2), ``+ (S a) b^T`` (2 N^2), ``+ v k^T`` (2 N^2), ``y = S r`` (2 N^2). The chunked form and
  the kernel do more (the triangular solves of the chunk's transition products); that extra work is not
  counted, so their GFLOP/s are the recurrence's useful rate, comparable across forms.

Bytes (the minimum any form has to move between memory and the chip; s = itemsize of the sequences):

- WKV-4 forward: read k, v (``2 B T C s``), w, u (``2 C * 4``), the state triple (``3 B C * 4``); write y
  (``B T C s``) and the state (``3 B C * 4``). Backward adds: read k, v, dy (``3 B T C s``) and the state,
  write dk, dv (``2 B T C s``), dw, du, the initial state's gradient.
- WKV-6 forward: read r, k, v (``3 B T H N s``), w (``B T H N * 4``), u, the state (``B H N^2 * 4``); write
  y (``B T H N s``) and the state. Backward adds: read r, k, v, dy (``4 B T H N s``), w, the states; write
  dr, dk, dv (``3 B T H N s``), dw (``B T H N * 4``), du and the initial state's gradient.
- WKV-7 forward: read r, k, v, a, b (``5 B T H N s``), w (``B T H N * 4``), the state; write y and the
  state. Backward adds: read the five sequences, w, dy and the states; write their five gradients in s and
  dw in float32, and the initial state's gradient.
"""

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from rwkv_jax import numerics
from rwkv_jax.models.family import get_family

F32 = 4
WKV4_FLOPS_PER_STEP = 24
WKV6_PER_TOKEN_FLOPS = {"recurrent": 7, "scan": 9}  # x N^2 per token and head
WKV7_FLOPS = 9  # x N^2 per token and head, every form (the recurrence's work)
DIAGONAL_BLOCK = 16  # tokens of the exact pairwise-decay blocks of the WKV-6 chunked form and kernel
BACKWARD_FACTOR = 2  # backward FLOPs per forward FLOP
# Sequences read by the forward pass in the inputs' dtype, besides the float32 log-decays (WKV-4: k, v).
SEQUENCES_READ = {"rwkv4": 2, "rwkv6": 3, "rwkv7": 5}


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    length: int
    heads: int
    size: int
    chunk: int
    itemsize: int


def forward_flops(family: str, form: str, s: Shape) -> float:
    """Analytical forward FLOPs of ``form`` (see the module docstring)."""
    tokens = s.batch * s.length
    if family == "rwkv4":
        return tokens * s.heads * s.size * WKV4_FLOPS_PER_STEP
    if family == "rwkv7":
        return tokens * s.heads * WKV7_FLOPS * s.size**2
    if form in WKV6_PER_TOKEN_FLOPS:
        return tokens * s.heads * WKV6_PER_TOKEN_FLOPS[form] * s.size**2
    chunks = -(-s.length // s.chunk)
    c, n = s.chunk, s.size
    per_chunk = 4 * c * c * n + 4 * c * n * n + (6 + 2 * DIAGONAL_BLOCK) * c * n
    return s.batch * s.heads * chunks * per_chunk


def forward_bytes(family: str, s: Shape, backward: bool) -> float:
    """Minimum bytes moved by the forward pass, or by forward and backward together."""
    sequence = s.batch * s.length * s.heads * s.size  # elements of one [B, T, C] / [B, T, H, N] array
    read = SEQUENCES_READ[family]
    if family == "rwkv4":
        params, state = 2 * s.heads * s.size * F32, 3 * s.batch * s.heads * s.size * F32
        forward = (read + 1) * sequence * s.itemsize + params + 2 * state
        extra = 5 * sequence * s.itemsize + 2 * params + 2 * state
        return forward + (extra if backward else 0)
    params = s.heads * s.size * F32 if family == "rwkv6" else 0  # the bonus u
    state = s.batch * s.heads * s.size**2 * F32
    forward = (read + 1) * sequence * s.itemsize + sequence * F32 + params + 2 * state
    extra = (2 * read + 1) * sequence * s.itemsize + 2 * sequence * F32 + params + 2 * state
    return forward + (extra if backward else 0)


def median_seconds(function: Callable, args: tuple, repeats: int) -> float:
    """Median wall time of ``function(*args)`` over ``repeats`` calls after a warm-up (compile) call."""
    jax.block_until_ready(function(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_functions(family: str, form: str, chunk: int) -> dict[str, Callable]:
    """Jitted ``(inputs, state) -> (y, state)`` of one form and the value and gradient of a scalar loss."""
    wkv = get_family(family).wkv

    def run(inputs: tuple, state: object) -> tuple:
        return wkv(*inputs, state=state, impl=form, chunk_size=chunk)

    def loss(inputs: tuple, state: object) -> jax.Array:
        y, final = run(inputs, state)
        leaves = [y.astype(jnp.float32), *jax.tree.leaves(final)]
        return sum(jnp.sum(jnp.square(x)) for x in leaves)

    return {"fwd": jax.jit(run), "fwd+bwd": jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))}


def skip_reason(family: str, form: str, s: Shape, args: argparse.Namespace) -> str:
    on_cpu = jax.default_backend() == "cpu"
    if form == "pallas" and on_cpu and s.length > args.pallas_max_length:
        return f"skipped: Pallas is interpreted on CPU; T > --pallas-max-length {args.pallas_max_length}"
    scan_states = s.batch * s.length * s.heads * s.size**2 * F32
    if family != "rwkv4" and form == "scan" and scan_states > args.scan_max_bytes:
        return f"skipped: the scan would materialise {scan_states / 1e9:.1f} GB of states (--scan-max-bytes)"
    return ""


def regime_of(family: str) -> str:
    """ "mixed" decays where the family's numerics case has them, else its first regime."""
    regimes = tuple(get_family(family).numerics.regimes)
    return "mixed" if "mixed" in regimes else regimes[0]


def bench_family(family: str, s: Shape, args: argparse.Namespace) -> None:
    inputs, state = numerics.make_inputs(
        family, batch=s.batch, length=s.length, heads=s.heads, size=s.size, dtype=args.dtype,
        regime=regime_of(family),
    )  # fmt: skip
    names = get_family(family).wkv.form_names
    for form in [f for f in names if not args.forms or f in args.forms.split(",")]:
        reason = skip_reason(family, form, s, args)
        if reason:
            print(f"{family:<7}{form:<11}{reason}")
            continue
        flops = forward_flops(family, form, s)
        try:
            for pass_name, function in timed_functions(family, form, s.chunk).items():
                seconds = median_seconds(function, (inputs, state), args.repeats)
                backward = pass_name != "fwd"
                total_flops = flops * (1 + BACKWARD_FACTOR * backward)
                total_bytes = forward_bytes(family, s, backward)
                rates = f"{total_flops / seconds / 1e9:>10.2f}{total_bytes / seconds / 1e9:>9.2f}"
                label = f"{family:<7}{form:<11}{pass_name:<9}"
                print(f"{label}{seconds * 1e3:>10.3f}{rates}{total_flops / total_bytes:>9.2f}", flush=True)
        except Exception as error:  # a kernel the backend cannot run: report and go on with the others
            if form != "pallas":
                raise
            first_line = str(error).splitlines()[0][:120] if str(error) else ""
            print(f"{family:<7}{form:<11}unavailable: {type(error).__name__}: {first_line}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    on_cpu = jax.default_backend() == "cpu"
    swept = [f.name for f in numerics.swept_families()]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default=",".join(swept))
    parser.add_argument("--forms", default="", help="comma-separated (default: every form of each family)")
    parser.add_argument("--batch", type=int, default=1 if on_cpu else 8)
    parser.add_argument("--length", type=int, default=1024 if on_cpu else 4096)
    parser.add_argument("--heads", type=int, default=4 if on_cpu else 32)
    parser.add_argument("--head-size", type=int, default=64, help="N; WKV-4 has C = heads * head-size")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=numerics.DTYPES)
    parser.add_argument("--repeats", type=int, default=5 if on_cpu else 20)
    parser.add_argument("--pallas-max-length", type=int, default=256, help="longest T for Pallas on CPU")
    parser.add_argument(
        "--scan-max-bytes", type=float, default=2e9, help="largest state stack of a scan form"
    )
    args = parser.parse_args(argv)
    for family in args.families.split(","):
        if family not in swept:
            parser.error(f"--families: unknown {family!r}; expected some of {', '.join(swept)}")
    for name in ("batch", "length", "heads", "head_size", "chunk_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    itemsize = jnp.dtype(args.dtype).itemsize
    shape = Shape(args.batch, args.length, args.heads, args.head_size, args.chunk_size, itemsize)
    device = jax.devices()[0]
    print(
        f"{device.platform} ({device.device_kind}); B={shape.batch} T={shape.length} H={shape.heads} "
        f"N={shape.size} (WKV-4: C={shape.heads * shape.size}) chunk={shape.chunk} {args.dtype}; "
        f"median of {args.repeats}"
    )
    print(f"{'family':<7}{'form':<11}{'pass':<9}{'ms':>10}{'GFLOP/s':>10}{'GB/s':>9}{'FLOP/B':>9}")
    for family in args.families.split(","):
        bench_family(family, shape, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
