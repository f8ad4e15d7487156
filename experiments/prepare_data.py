r"""Builds binidx training data: Shakespeare's works (byte level), or any text file/folder with a tokenizer.

    python experiments/prepare_data.py shakespeare --out data/shakespeare
    python experiments/prepare_data.py text --input corpus/ --tokenizer world --out data/corpus \
        --val-fraction 0.01

Writes OUT/train.{bin,idx} and OUT/val.{bin,idx} (RWKV-LM / GPT-NeoX MMapIndexedDataset format). For text,
each file is one document followed by the end-of-document token 0; the last --val-fraction of the documents
(at least one when there are two or more) goes to validation.
"""

import argparse
import pathlib
import sys

import numpy as np


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", choices=["shakespeare", "text"])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--input", help="text: a .txt file or a folder of them")
    parser.add_argument("--tokenizer", default="byte", help="text: byte | world | tokenizer file")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    args = parser.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.source == "shakespeare":
        from rwkv_jax.training.shakespeare import prepare

        train, val = prepare(args.out, args.val_fraction)
    else:
        if not args.input:
            parser.error("text needs --input FILE_OR_FOLDER")
        train, val = prepare_text(args.input, args.tokenizer, pathlib.Path(args.out), args.val_fraction)
    from rwkv_jax.training.binidx import BinIdx

    for prefix in (train, val):
        ds = BinIdx(prefix)
        print(f"{prefix}: {len(ds)} documents, {ds.tokens.size:,} tokens ({ds.dtype})")
    return 0


def prepare_text(source: str, tokenizer: str, out: pathlib.Path, val_fraction: float) -> tuple[str, str]:
    from rwkv_jax.training.binidx import write_binidx
    from rwkv_jax.training.data import END_OF_DOCUMENT, encode_text, text_files

    files = text_files(source)
    docs = [np.append(encode_text(f.read_text(encoding="utf-8"), tokenizer), END_OF_DOCUMENT) for f in files]
    num_val = (
        min(len(docs) - 1, max(1, round(len(docs) * val_fraction))) if val_fraction and len(docs) > 1 else 0
    )
    dtype = np.uint16 if max(int(d.max()) for d in docs) < 65536 else np.int32
    write_binidx(out / "train", docs[: len(docs) - num_val], dtype)
    write_binidx(out / "val", docs[len(docs) - num_val :], dtype)
    return str(out / "train"), str(out / "val")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
