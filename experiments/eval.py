r"""Evaluates a checkpoint: loss, perplexity, bits per byte on text or binidx; LAMBADA-style accuracy.

    python experiments/eval.py --workdir workdir/demo --data data/shakespeare/val
    python experiments/eval.py --official RWKV-4-Pile-169M.pth --tokenizer path/20B_tokenizer.json \
        --data pile_val_text_document --seq-len 1024 --lambada lambada_test.jsonl

--workdir reads a run of experiments/train.py directly (its config.json and newest orbax checkpoint, or
--step; its dtype and WKV form unless --dtype / --wkv-impl are given); --official a BlinkDL .pth or
.safetensors file or a Hugging Face folder (rwkv_jax.checkpoint.official.load_official). --data is a
binidx prefix, a text file or a folder of .txt files (tokenized with --tokenizer); --lambada a JSON-lines
file of {"text": ...} passages whose last word is predicted. Prints one JSON object.
"""

import argparse
import json
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a training run directory")
    source.add_argument("--official", help="a BlinkDL .pth / .safetensors file or a Hugging Face folder")
    parser.add_argument("--step", type=int, help="checkpoint step of --workdir (default: the newest)")
    parser.add_argument("--data", help="binidx prefix, text file or folder of .txt files")
    parser.add_argument("--lambada", help="JSON lines of {'text': passage} for last-word accuracy")
    parser.add_argument(
        "--tokenizer",
        help="byte | world | tokenizer file (default: the run's, else the vocabulary's)",
    )
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batches", type=int, default=64, help="evaluate at most this many batches")
    parser.add_argument("--dtype", help="compute dtype (default: the run's, float32 for --official)")
    parser.add_argument("--wkv-impl", help="WKV form (default: the run's, auto for --official)")
    args = parser.parse_args(argv)
    if not args.data and not args.lambada:
        parser.error("nothing to evaluate: give --data and/or --lambada")
    print(json.dumps(evaluate(args), indent=2))
    return 0


def evaluate(args: argparse.Namespace) -> dict:
    import jax

    from rwkv_jax.evaluation.loading import default_tokenizer, load_model
    from rwkv_jax.training.data import eval_batches, load_stream
    from rwkv_jax.training.evaluate import evaluate_batches, last_word_accuracy, token_byte_lengths
    from rwkv_jax.training.model import ModelFns
    from rwkv_jax.training.step import make_eval_step

    path = args.workdir or args.official
    module, recorded, step = load_model(path, dtype=args.dtype, wkv_impl=args.wkv_impl, step=args.step)
    fns, params = ModelFns.split(module)
    vocab_size = module.config.vocab_size
    tokenizer = args.tokenizer or default_tokenizer(recorded, vocab_size)
    results = {"checkpoint": path if step is None else f"{path} step {step}"}
    results["tokenizer"] = tokenizer
    if args.data:
        stream = load_stream(args.data, tokenizer)
        batches = eval_batches(stream, args.seq_len, args.batch_size, args.max_batches)
        eval_step = jax.jit(make_eval_step(fns))
        results.update(
            evaluate_batches(eval_step, params, batches, token_byte_lengths(tokenizer, vocab_size))
        )
    if args.lambada:
        from rwkv_jax.tokenizers import get_tokenizer

        with open(args.lambada, encoding="utf-8") as f:
            passages = [json.loads(line)["text"] for line in f if line.strip()]
        scores = last_word_accuracy(fns, params, passages, get_tokenizer(tokenizer).encode)
        results.update({f"lambada_{k}": v for k, v in scores.items()})
    return results


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
