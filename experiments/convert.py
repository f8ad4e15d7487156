"""Inspect an official BlinkDL ``.pth`` checkpoint and write it back through our model.

    python experiments/convert.py MODEL.pth --check
    python experiments/convert.py MODEL.pth --roundtrip OUT.pth

``--check`` prints the detected family, the inferred config and the parameter count. ``--roundtrip`` loads
the file into our model, saves it with ``save_official`` and reports whether every tensor came back equal
(after conversion to float32, the dtype ``save_official`` writes).
"""

import argparse
import dataclasses
import sys

import numpy as np
from flax import nnx

from rwkv_jax.checkpoint.official import detect, load_official, save_official
from rwkv_jax.checkpoint.pth import read_pth


def check(path: str) -> nnx.Module:
    """Prints family, config and parameter count of the checkpoint at ``path``; returns the loaded model."""
    family = detect(list(read_pth(path)))
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
    original, saved = read_pth(path), read_pth(out)
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
    parser.add_argument("checkpoint", help="an official BlinkDL .pth file")
    parser.add_argument("--check", action="store_true", help="print family, config and parameter count")
    parser.add_argument("--roundtrip", metavar="OUT.pth", help="save the loaded model to OUT.pth and compare")
    args = parser.parse_args(argv)
    if not args.check and not args.roundtrip:
        parser.error("give --check and/or --roundtrip OUT.pth")
    try:
        if args.check:
            check(args.checkpoint)
        if args.roundtrip and not roundtrip(args.checkpoint, args.roundtrip):
            return 1
    except (OSError, ValueError) as error:  # unreadable file, PthFormatError, CheckpointLayoutError
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
