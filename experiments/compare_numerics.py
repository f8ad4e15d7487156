"""Compares every WKV form with the float64 reference: y, final state and gradients, per dtype, T and regime.

    python experiments/compare_numerics.py --out /tmp/numerics            # every family, T up to 16384
    python experiments/compare_numerics.py --families rwkv6 --lengths 64,1024 --regimes typical,near1
    python experiments/compare_numerics.py --out /tmp/numerics --render /tmp/numerics/numerics.csv

For each registered family with a numerics case (``rwkv_jax.numerics.swept_families()``: RWKV-4, Eagle/Finch,
Goose), each form of its WKV table (recurrent, scan, chunked, pallas: those it has), input dtype (float32,
bfloat16), length T and regime (the family's: decay regimes, plus large keys for RWKV-4 and extreme
in-context learning rates for Goose) it prints one row of relative errors ``||a - b|| / ||b||`` against the
float64 reference on the same inputs (see ``rwkv_jax.numerics``), and writes ``numerics.csv`` (every
gradient) and ``numerics.md`` (the regimes, a summary of the worst errors per form and dtype, then the worst
gradient of every row) to ``--out``; ``--render`` remakes the Markdown from an earlier CSV without running
anything. Shapes are small (each family's default: B=1, H=2, N=16; C=32 for RWKV-4) so that the float64
reference stays cheap at T=16384. On CPU the Pallas kernels run in the interpreter, which is slow: Pallas is
run up to ``--pallas-max-length`` only there, and ``--max-length FORM=T`` caps any other form (the output
says which rows were skipped).
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
from rwkv_jax.models.family import Family


def parse_list(text: str, convert=str) -> tuple:
    return tuple(convert(item) for item in text.split(",") if item)


def parse_limits(entries: list[str]) -> dict[str, int]:
    """``["scan=4096", "rwkv7:scan=1024"]`` -> ``{"scan": 4096, "rwkv7:scan": 1024}`` (ValueError if bad)."""
    limits = {}
    for entry in entries:
        key, _, value = entry.partition("=")
        if not key or not value.isdigit() or int(value) < 1:
            raise ValueError(f"expected FORM=T or FAMILY:FORM=T with T >= 1; got {entry!r}")
        limits[key] = int(value)
    return limits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = [family.name for family in numerics.swept_families()]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=pathlib.Path, required=True, help="folder for numerics.csv and numerics.md"
    )
    parser.add_argument("--families", default="", help=f"comma-separated, some of {', '.join(names)} (all)")
    parser.add_argument("--forms", default="", help="comma-separated forms (default: all of each family)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--lengths", default="16,256,4096,16384", help="comma-separated sequence lengths T")
    parser.add_argument("--regimes", default="", help="comma-separated regimes (default: all of each family)")
    parser.add_argument("--batch", type=int, help="B (default: each family's)")
    parser.add_argument("--heads", type=int, help="H (default: each family's)")
    parser.add_argument(
        "--head-size", type=int, help="N (RWKV-4: C = heads * head-size; default: each family's)"
    )
    parser.add_argument(
        "--chunk-size", type=int, help="chunk of the chunked and Pallas forms (default: each family's)"
    )
    parser.add_argument(
        "--pallas-max-length",
        type=int,
        default=1024,
        help="longest T for the Pallas form on CPU, where it runs in the slow interpreter (0: no limit)",
    )
    parser.add_argument(
        "--max-length",
        action="append",
        default=[],
        metavar="[FAMILY:]FORM=T",
        help="longest T for a form (of one family), on every backend; repeatable",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--render",
        type=pathlib.Path,
        help="only write numerics.md from this numerics.csv (with the run's options, for the header)",
    )
    args = parser.parse_args(argv)
    args.families = parse_list(args.families) or tuple(names)
    for family in args.families:
        if family not in names:
            parser.error(f"--families: unknown family {family!r}; expected some of {names}")
    swept = [numerics.swept_family(name) for name in args.families]
    for option, known in (("forms", form_names), ("regimes", regime_names)):
        every = {name for family in swept for name in known(family)}
        for name in parse_list(getattr(args, option)):
            if name not in every:
                parser.error(f"--{option}: unknown {name!r}; expected some of {sorted(every)}")
    try:
        args.lengths = parse_list(args.lengths, int)
        args.max_length = parse_limits(args.max_length)
    except ValueError as error:
        parser.error(f"--lengths / --max-length: {error}")
    return args


def form_names(family: Family) -> tuple[str, ...]:
    return family.wkv.form_names


def regime_names(family: Family) -> tuple[str, ...]:
    return tuple(family.numerics.regimes)


def selected(chosen: tuple[str, ...], available: tuple[str, ...]) -> tuple[str, ...]:
    """The chosen names that a family has, in its order (all of them when none were chosen)."""
    return tuple(name for name in available if not chosen or name in chosen)


def form_limits(family: str, args: argparse.Namespace) -> dict[str, int]:
    """The longest T per form of ``family``: ``--max-length`` (``FORM=T``, then ``FAMILY:FORM=T``), and the
    Pallas interpreter's ``--pallas-max-length`` on CPU only (real kernels run at every T)."""
    limits = {}
    if jax.default_backend() == "cpu" and args.pallas_max_length > 0:
        limits["pallas"] = args.pallas_max_length
    for key, length in args.max_length.items():
        name, _, form = key.rpartition(":")
        if name in ("", family):
            limits[form] = length
    return limits


def print_row(row: numerics.Row) -> None:
    name, worst = row.worst_gradient()
    ok = "-" if row.skipped else ("ok" if row.within_bounds() else "FAIL")
    errors = " ".join(f"{numerics.format_error(e):>8}" for e in (row.y, row.state, worst))
    label = f"{row.family:<7}{row.form:<10}{row.dtype:<9}{row.length:>6} {row.regime:<11}"
    print(f"{label}{errors} {name:<14}{ok:<5}{row.note}", flush=True)


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Writes to a temporary name beside ``path``, then renames: never a half-written file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def csv_text(rows: list[numerics.Row]) -> str:
    flat = [row.flat() for row in rows]
    columns = list(dict.fromkeys(key for record in flat for key in record))  # every family's gradient names
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def regimes_table(rows: list[numerics.Row]) -> str:
    """A Markdown table of the regimes of the families in ``rows``, as each family's case describes them."""
    lines = ["| family | regime | inputs |", "|---|---|---|"]
    for name in dict.fromkeys(row.family for row in rows):
        family = numerics.swept_family(name)
        used = {row.regime for row in rows if row.family == name}
        for regime, description in family.numerics.regimes.items():
            if regime in used:
                lines.append(f"| {name} | {regime} | {description} |")
    return "\n".join(lines)


def sizes_line(rows: list[numerics.Row], args: argparse.Namespace) -> str:
    """``Shapes: rwkv4 B=1 C=32, chunk -; ...`` from the rows (T per row) and the chunk sizes used."""
    parts = []
    for name in dict.fromkeys(row.family for row in rows):
        shape = next(row.shape for row in rows if row.family == name)
        sizes = " ".join(size for size in shape.split() if not size.startswith("T="))
        wkv = numerics.swept_family(name).wkv
        chunk = (args.chunk_size or wkv.default_chunk_size) if "chunked" in wkv.form_names else "-"
        parts.append(f"{name} ({wkv.name}) {sizes}, chunk size {chunk}")
    return "Shapes (T per row): " + "; ".join(parts) + f"; seed {args.seed}."


def markdown_report(rows: list[numerics.Row], args: argparse.Namespace, seconds: float) -> str:
    labels = {(row.family, row.wkv, row.dtype) for row in rows}
    bounds = "; ".join(
        f"{wkv} {dtype}: outputs <= {b.forward:g}, gradients <= {b.gradient:g}"
        for family, wkv, dtype in sorted(labels)
        for b in (numerics.bounds_of(family, dtype),)
    )
    lines = [
        "# WKV numerics: every form against the float64 reference",
        "",
        f"Generated by `python experiments/compare_numerics.py {' '.join(sys.argv[1:])}` on "
        f"{jax.default_backend()} (jax {jax.__version__})"
        + ("." if math.isnan(seconds) else f" in {seconds:.0f} s."),
        sizes_line(rows, args),
        "",
        "Relative errors `||a - b|| / ||b||` of y, of the final state and of the worst gradient (of a fixed "
        "random projection of y and the final state, with respect to every input and the initial state). "
        f"Bounds ({bounds}). NaN/Inf are printed as such.",
    ]
    skipped = sorted({f"{row.family} {row.note.removeprefix('skipped: ')}" for row in rows if row.skipped})
    if skipped:
        lines.append("Skipped (NaN rows): " + "; ".join(skipped) + ".")
    lines += ["", "## Regimes", "", regimes_table(rows)]
    lines += ["", "## Worst errors per form and dtype", "", numerics.summary_table(rows)]
    lines += ["", "## Every comparison", "", numerics.markdown_table(rows), ""]
    return "\n".join(lines)


def sweep(args: argparse.Namespace) -> list[numerics.Row]:
    """The rows of every chosen family, printed as they come."""
    rows = []
    for name in args.families:
        family = numerics.swept_family(name)
        forms = selected(parse_list(args.forms), form_names(family))
        regimes = selected(parse_list(args.regimes), regime_names(family))
        if not forms or not regimes:
            print(f"{name}: none of the chosen forms or regimes apply; skipped")
            continue
        rows += numerics.compare_forms(
            name,
            forms=forms,
            dtypes=parse_list(args.dtypes),
            lengths=args.lengths,
            regimes=regimes,
            batch=args.batch,
            heads=args.heads,
            size=args.head_size,
            chunk_size=args.chunk_size,
            max_lengths=form_limits(name, args),
            seed=args.seed,
            progress=print_row,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        with open(args.render, newline="", encoding="utf-8") as file:
            rows = [numerics.Row.from_flat(record) for record in csv.DictReader(file)]
        write_atomically(args.out / "numerics.md", markdown_report(rows, args, seconds=math.nan))
        return 0
    print(f"backend {jax.default_backend()}; lengths {args.lengths}; families {', '.join(args.families)}")
    print(f"{'family':<7}{'form':<10}{'dtype':<9}{'T':>6} {'regime':<11}{'y':>8} {'state':>8} {'grad':>8} "
          f"{'worst input':<14}{'ok':<5}note")  # fmt: skip
    start = time.perf_counter()
    rows = sweep(args)
    seconds = time.perf_counter() - start
    write_atomically(args.out / "numerics.csv", csv_text(rows))
    write_atomically(args.out / "numerics.md", markdown_report(rows, args, seconds))
    failures = [row for row in rows if not row.skipped and not row.within_bounds()]
    print(f"{len(rows)} rows in {seconds:.0f} s, {len(failures)} outside the bounds; wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
