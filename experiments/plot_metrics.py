r"""Plots the training and validation loss of a run (its metrics.jsonl) into a PNG.

    python experiments/plot_metrics.py workdir/demo --out docs/demo_curve.png

Training loss per logged step (nats/token) and validation loss; with --target, a dashed line at that loss.
"""

import argparse
import pathlib
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workdir", help="a run directory holding metrics.jsonl")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default=None)
    parser.add_argument("--target", type=float, default=None, help="draw a target loss line")
    args = parser.parse_args(argv)
    plot(pathlib.Path(args.workdir), pathlib.Path(args.out), args.title, args.target)
    print(f"wrote {args.out}")
    return 0


def plot(workdir: pathlib.Path, out: pathlib.Path, title: str | None, target: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rwkv_jax.training.metrics import METRICS_FILE, read_metrics

    records = read_metrics(workdir / METRICS_FILE)
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), float)]
    val = [(r["step"], r["val_loss"]) for r in records if isinstance(r.get("val_loss"), float)]
    if not train and not val:
        raise ValueError(f"{workdir / METRICS_FILE} holds no loss records")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), lw=1.0, alpha=0.8, label="train loss")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", lw=1.8, label="validation loss")
        ax.annotate(f"{val[-1][1]:.3f}", val[-1], textcoords="offset points", xytext=(-10, 8))
    if target is not None:
        ax.axhline(target, ls="--", color="gray", lw=1, label=f"target {target:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title or workdir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
