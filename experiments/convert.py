"""Inspect an official checkpoint, write it back through our model, or convert it to another format.

    python experiments/convert.py MODEL.pth --check
    python experiments/convert.py MODEL.pth --roundtrip OUT.pth
    python experiments/convert.py MODEL.pth --to-hf OUT_DIR [--hf-dtype bfloat16] [--hf-layout rwkv-block]
    python experiments/convert.py HF_DIR --roundtrip OUT.pth                         # and back

The checkpoint is a ``.pth``, a ``.safetensors`` with BlinkDL's names or a Hugging Face folder.
``--check`` prints the detected family, the inferred config and the parameter count. ``--roundtrip`` loads
the checkpoint into our model, saves it with ``save_official`` (``.pth``, or ``.safetensors`` by the name)
and reports whether every tensor came back equal (after conversion to float32, the dtype ``save_official``
writes). ``--to-hf`` writes an RWKV-7 Hugging Face folder (flash-linear-attention's layout, or
RWKV-block's with ``--hf-layout rwkv-block``; docs/evaluation.md).
"""

import argparse
import dataclasses
import sys

import numpy as np
from flax import nnx

from rwkv_jax.checkpoint.hf import save_hf
from rwkv_jax.checkpoint.official import detect, load_official, read_official, save_official


def check(path: str) -> nnx.Module:
    """Prints family, config and parameter count of the checkpoint at ``path``; returns the loaded model."""
    family = detect(list(read_official(path)[0]))
    model = load_official(path)
    params = nnx.state(model, nnx.Param)
    count = sum(int(np.prod(leaf.shape)) for leaf in nnx.to_flat_state(params).leaves)
    print(f"family: {family.name} ({family.title})")
    for field, value in dataclasses.asdict(model.config).items():
        print(f"  {field}: {value}")
    print(f"parameters: {count:,}")
    return model


def roundtrip(path: str, out: str) -> bool:
    """Loads ``path``, saves it to ``out``; True when every tensor of ``out`` equals the original's."""
    save_official(load_official(path), out)
    original, saved = read_official(path)[0], read_official(out)[0]
    if set(original) != set(saved):
        print(f"tensor names differ: {sorted(set(original) ^ set(saved))}")
        return False
    if list(original) != list(saved):
        print("note: tensors are written in the official order, which differs from this file's order")
    unequal = [
        name for name in original if not np.array_equal(np.asarray(original[name], np.float32), saved[name])
    ]
    print(f"wrote {out}: {len(saved)} tensors, {'all equal' if not unequal else f'{len(unequal)} differ'}")
    for name in unequal:
        print(f"  differs: {name}")
    return not unequal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="a BlinkDL .pth / .safetensors file or a Hugging Face folder")
    parser.add_argument("--check", action="store_true", help="print family, config and parameter count")
    parser.add_argument("--roundtrip", metavar="OUT.pth", help="save the loaded model to OUT.pth and compare")
    parser.add_argument("--to-hf", metavar="OUT_DIR", help="write a Hugging Face folder (a new folder)")
    parser.add_argument("--hf-dtype", default="float32", help="float32 | bfloat16 | float16 for --to-hf")
    parser.add_argument("--hf-layout", default="fla", help="fla | rwkv-block: the names --to-hf writes")
    args = parser.parse_args(argv)
    if not (args.check or args.roundtrip or args.to_hf):
        parser.error("give --check, --roundtrip OUT.pth and/or --to-hf OUT_DIR")
    try:
        if args.check:
            check(args.checkpoint)
        if args.roundtrip and not roundtrip(args.checkpoint, args.roundtrip):
            return 1
        if args.to_hf:
            save_hf(load_official(args.checkpoint), args.to_hf, dtype=args.hf_dtype, layout=args.hf_layout)
            print(f"wrote {args.to_hf}")
    except (OSError, ValueError, TypeError) as error:  # unreadable, malformed, a family without the format
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
