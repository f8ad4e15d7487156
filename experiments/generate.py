"""Generates text from an official RWKV checkpoint, streaming it to stdout as it comes.

    python experiments/generate.py --model RWKV-x060-World-1B6.pth --tokenizer world \\
        --prompt "The Eiffel tower is in" --max-new-tokens 100 --temperature 1.0 --top-p 0.7
    python experiments/generate.py --model ../shared/fixtures/tiny-rwkv/tiny-rwkv-4v0-660K.pth \\
        --tokenizer byte --prompt '"in' --max-new-tokens 20 --temperature 0     # greedy

The prompt is printed first, then each new piece of text as soon as its bytes form whole characters (a
character can be split across tokens). ``--stop`` ends generation at a string that is one token (e.g.
"\\n\\n" in the World vocabulary). Temperature 0 is greedy decoding.
"""

import argparse
import codecs
import sys

from rwkv_jax.tokenizers import get_tokenizer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="official BlinkDL .pth checkpoint")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--tokenizer", default="world", help='"byte", "world" or a tokenizer.json path')
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[], help="a string that is one token; repeatable")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--wkv-impl", default="auto", help="recurrent, scan, chunked, pallas or auto")
    return parser.parse_args(argv)


def stop_ids(tokenizer, stops: list[str]) -> list[int]:
    ids = []
    for stop in stops:
        encoded = tokenizer.encode(stop)
        if len(encoded) != 1:
            raise SystemExit(f"--stop {stop!r} is {len(encoded)} tokens ({encoded}); it must be exactly one")
        ids += encoded
    if tokenizer.eos_id is not None:
        ids.append(tokenizer.eos_id)
    return ids


def main(argv: list[str] | None = None) -> str:
    """Runs the command line ``argv``; returns the text it printed (prompt and continuation)."""
    args = parse_args(argv)
    from rwkv_jax.checkpoint.official import load_official
    from rwkv_jax.generation import generate

    tokenizer = get_tokenizer(args.tokenizer)
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise SystemExit("--prompt must not be empty")
    model = load_official(args.model, dtype=args.dtype, wkv_impl=args.wkv_impl)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise SystemExit(
            f"the {args.tokenizer} tokenizer has {tokenizer.vocab_size} ids, the model only "
            f"{model.config.vocab_size}: wrong --tokenizer?"
        )

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    printed = [args.prompt]
    print(args.prompt, end="", flush=True)

    def stream(new_tokens, step: int) -> None:
        if new_tokens[0] >= 0:
            text = decoder.decode(tokenizer.decode_bytes([int(new_tokens[0])]))
            printed.append(text)
            print(text, end="", flush=True)

    generate(
        model, [prompt], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, stop_tokens=stop_ids(tokenizer, args.stop), callback=stream,
    )  # fmt: skip
    printed.append(decoder.decode(b"", final=True))
    print(printed[-1], flush=True)
    return "".join(printed)


if __name__ == "__main__":
    main(sys.argv[1:])
