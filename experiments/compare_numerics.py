"""Compares every WKV form with the float64 reference: y, final state and gradients, per dtype, T and decay.

    python experiments/compare_numerics.py --out /tmp/numerics            # both families, T up to 16384
    python experiments/compare_numerics.py --families v6 --lengths 64,1024 --regimes typical,near1
    python experiments/compare_numerics.py --out /tmp/numerics --render /tmp/numerics/numerics.csv

For each family (v4: RWKV-4, v6: Eagle/Finch), form (recurrent, scan, chunked for v6, pallas), input dtype
(float32, bfloat16), length T and decay regime (typical, near0, near1, mixed, and large_k for v4) it prints
one row of relative errors ``||a - b|| / ||b||`` against the float64 reference on the same inputs (see
``rwkv_jax.numerics``), and writes ``numerics.csv`` (every gradient) and ``numerics.md`` (a summary of the
worst errors per form and dtype, then the worst gradient of every row) to ``--out``; ``--render`` remakes
the Markdown from an earlier CSV without running anything. Shapes are small (B=1, H=2, N=16; C=32 for v4)
so that the float64 reference stays cheap at T=16384. On CPU the Pallas kernels run in the interpreter,
which is slow: Pallas is run up to ``--pallas-max-length`` only there (the output says which rows were
skipped).
"""

import argparse
import csv
import io
import math
import os
import pathlib
import sys
import time

import jax

from rwkv_jax import numerics


def parse_list(text: str, convert=str) -> tuple:
    return tuple(convert(item) for item in text.split(",") if item)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=pathlib.Path, required=True, help="folder for numerics.csv and numerics.md"
    )
    parser.add_argument("--families", default="v4,v6", help="comma-separated: v4, v6")
    parser.add_argument("--forms", default="", help="comma-separated forms (default: all of each family)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--lengths", default="16,256,4096,16384", help="comma-separated sequence lengths T")
    parser.add_argument(
        "--regimes", default="", help="comma-separated decay regimes (default: all of each family)"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-size", type=int, default=16, help="N for v6; v4 has C = heads * head-size")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument(
        "--pallas-max-length",
        type=int,
        default=1024,
        help="longest T for the Pallas form on CPU, where it runs in the slow interpreter (0: no limit)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--render",
        type=pathlib.Path,
        help="only write numerics.md from this numerics.csv (with the run's options, for the header)",
    )
    args = parser.parse_args(argv)
    for family in parse_list(args.families):
        if family not in numerics.FAMILIES:
            parser.error(f"--families: unknown family {family!r}; expected some of {numerics.FAMILIES}")
    for option, known in (("forms", numerics.FORMS), ("regimes", numerics.REGIMES)):
        every = {name for names in known.values() for name in names}
        for name in parse_list(getattr(args, option)):
            if name not in every:
                parser.error(f"--{option}: unknown {name!r}; expected some of {sorted(every)}")
    try:
        args.lengths = parse_list(args.lengths, int)
    except ValueError:
        parser.error(f"--lengths must be comma-separated integers; got {args.lengths!r}")
    return args


def selected(chosen: tuple[str, ...], available: tuple[str, ...]) -> tuple[str, ...]:
    """The chosen names that a family has, in its order (all of them when none were chosen)."""
    return tuple(name for name in available if not chosen or name in chosen)


def form_limits(pallas_max_length: int) -> dict[str, int]:
    """The Pallas interpreter's length limit, on CPU only (real kernels run at every T)."""
    if jax.default_backend() == "cpu" and pallas_max_length > 0:
        return {"pallas": pallas_max_length}
    return {}


def print_row(row: numerics.Row) -> None:
    name, worst = row.worst_gradient()
    ok = "-" if row.skipped else ("ok" if row.within_bounds() else "FAIL")
    errors = " ".join(f"{numerics.format_error(e):>8}" for e in (row.y, row.state, worst))
    label = f"{row.family:<3} {row.form:<10}{row.dtype:<9}{row.length:>6} {row.regime:<8}"
    print(f"{label}{errors} {name:<14}{ok:<5}{row.note}", flush=True)


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Writes to a temporary name beside ``path``, then renames: never a half-written file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def csv_text(rows: list[numerics.Row]) -> str:
    flat = [row.flat() for row in rows]
    columns = list(dict.fromkeys(key for record in flat for key in record))  # v4 and v6 gradient names
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def markdown_report(rows: list[numerics.Row], args: argparse.Namespace, seconds: float) -> str:
    limits = form_limits(args.pallas_max_length)
    bounds = "; ".join(
        f"{dtype}: outputs <= {b.forward:g}, gradients <= {b.gradient:g}"
        for dtype, b in numerics.BOUNDS.items()
    )
    lines = [
        "# WKV numerics: every form against the float64 reference",
        "",
        f"Generated by `python experiments/compare_numerics.py {' '.join(sys.argv[1:])}` on "
        f"{jax.default_backend()} (jax {jax.__version__})"
        + ("." if math.isnan(seconds) else f" in {seconds:.0f} s."),
        f"Shapes: B={args.batch}, H={args.heads}, N={args.head_size} (v4: C={args.heads * args.head_size}); "
        f"chunk size {args.chunk_size}; seed {args.seed}.",
        "",
        "Relative errors `||a - b|| / ||b||` of y, of the final state and of the worst gradient (of a fixed "
        "random projection of y and the final state, with respect to every input and the initial state). "
        f"Bounds ({bounds}). NaN/Inf are printed as such.",
    ]
    if limits:
        lines.append(f"Pallas runs in interpret mode on this backend, up to T = {limits['pallas']}.")
    lines += ["", "## Worst errors per form and dtype", "", numerics.summary_table(rows)]
    lines += ["", "## Every comparison", "", numerics.markdown_table(rows), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        with open(args.render, newline="", encoding="utf-8") as file:
            rows = [numerics.Row.from_flat(record) for record in csv.DictReader(file)]
        write_atomically(args.out / "numerics.md", markdown_report(rows, args, seconds=math.nan))
        return 0
    limits = form_limits(args.pallas_max_length)
    print(f"backend {jax.default_backend()}; lengths {args.lengths}; limits {limits or 'none'}")
    print(f"{'fam':<4}{'form':<10}{'dtype':<9}{'T':>6} {'regime':<8}{'y':>8} {'state':>8} {'grad':>8} "
          f"{'worst input':<14}{'ok':<5}note")  # fmt: skip
    start = time.perf_counter()
    rows = []
    for family in parse_list(args.families):
        forms = selected(parse_list(args.forms), numerics.FORMS[family])
        regimes = selected(parse_list(args.regimes), numerics.REGIMES[family])
        if not forms or not regimes:
            print(f"{family}: none of the chosen forms or regimes apply; skipped")
            continue
        rows += numerics.compare_forms(
            family,
            forms=forms,
            dtypes=parse_list(args.dtypes),
            lengths=args.lengths,
            regimes=regimes,
            batch=args.batch,
            heads=args.heads,
            size=args.head_size,
            chunk_size=args.chunk_size,
            max_lengths=limits,
            seed=args.seed,
            progress=print_row,
        )
    seconds = time.perf_counter() - start
    write_atomically(args.out / "numerics.csv", csv_text(rows))
    write_atomically(args.out / "numerics.md", markdown_report(rows, args, seconds))
    failures = [row for row in rows if not row.skipped and not row.within_bounds()]
    print(f"{len(rows)} rows in {seconds:.0f} s, {len(failures)} outside the bounds; wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
