r"""State caching on a multiple-choice task: each context read once vs every request scored from scratch.

    python experiments/bench_lm_eval_cache.py                       # goose-small (4 x 256), random weights
    python experiments/bench_lm_eval_cache.py --path MODEL.pth --questions 64 --context 512 --choices 4

A synthetic task shaped like HellaSwag (a context of ``--context`` tokens, ``--choices`` continuations of
``--continuation`` tokens each) is scored with :func:`rwkv_jax.evaluation.scoring.score_continuations`
both ways, after one warm-up pass of each (compilation), taking turns ``--repeats`` times. Prints tokens
read, model calls, the median wall time of each way, their ratio, and the relative difference between the
two ways' scores (they compute the same numbers).
"""

import argparse
import statistics
import sys
import time

import numpy as np


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--path", help="a checkpoint (any kind load_model reads); default: --preset")
    parser.add_argument("--preset", default="goose-tiny", help="model preset when no --path")
    parser.add_argument("--n-layer", type=int, default=4, help="preset override (no --path)")
    parser.add_argument("--n-embd", type=int, default=256, help="preset override (no --path)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--context", type=int, default=256, help="context tokens")
    parser.add_argument("--continuation", type=int, default=16, help="tokens per choice")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pieces", default="64-8-1")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from rwkv_jax.evaluation.loading import load_model
    from rwkv_jax.evaluation.scoring import RecurrentScorer, score_continuations
    from rwkv_jax.presets import get_preset

    if args.path:
        model = load_model(args.path, dtype=args.dtype).model
    else:
        model = get_preset(args.preset).build(
            seed=0, n_layer=args.n_layer, n_embd=args.n_embd, dtype=args.dtype
        )
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(args.questions):
        context = rng.integers(1, vocab, args.context).tolist()
        pairs += [(context, rng.integers(1, vocab, args.continuation).tolist()) for _ in range(args.choices)]
    scorer = RecurrentScorer(model, args.batch_size, [int(p) for p in args.pieces.split("-")])
    ways = {"shared contexts": True, "from scratch": False}
    times: dict[str, list[float]] = {name: [] for name in ways}
    fed, calls, scores = {}, {}, {}
    for repeat in range(args.repeats + 1):  # the first round compiles and is not timed
        for name, share in ways.items():
            before = scorer.tokens_fed, scorer.calls
            start = time.perf_counter()
            scores[name] = np.array([s for s, _ in score_continuations(scorer, pairs, share_contexts=share)])
            elapsed = time.perf_counter() - start
            fed[name], calls[name] = scorer.tokens_fed - before[0], scorer.calls - before[1]
            if repeat:
                times[name].append(elapsed)
    print(f"model: {type(model).__name__} {model.config.n_layer} x {model.config.n_embd}, {args.dtype}; "
          f"{args.questions} questions x {args.choices} choices, context {args.context}, "
          f"continuation {args.continuation}, batch {args.batch_size}, pieces {args.pieces}")  # fmt: skip
    for name in ways:
        median = statistics.median(times[name])
        print(f"{name:16s} tokens read {fed[name]:7d}  calls {calls[name]:5d}  median {median:.3f} s")
    ratio = statistics.median(times["from scratch"]) / statistics.median(times["shared contexts"])
    difference = np.linalg.norm(scores["shared contexts"] - scores["from scratch"]) / np.linalg.norm(
        scores["from scratch"]
    )
    print(f"speedup {ratio:.2f}x; tokens {fed['from scratch'] / fed['shared contexts']:.2f}x fewer; "
          f"scores differ by {difference:.1e} (relative)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
