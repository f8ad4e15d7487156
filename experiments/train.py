r"""Trains an RWKV model from a config file, resuming from the workdir's newest checkpoint.

    python experiments/train.py --config configs/shakespeare_finch.py[:ARG] --workdir DIR \
        [--config.a.b=VALUE ...]

    # one of N processes (run the same command in each, with its own process_id):
    python experiments/train.py --config ... --workdir SHARED_DIR --config.distributed.initialize=True \
        --config.distributed.coordinator_address=HOST0:1234 --config.distributed.num_processes=N \
        --config.distributed.process_id=I

Writes DIR/config.json, DIR/metrics.jsonl, DIR/tensorboard/, DIR/checkpoints/ and DIR/final_metrics.json,
then prints the final validation loss and a sample.
"""

import argparse
import sys

from rwkv_jax.training.config import apply_overrides, load_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="configs/<file>.py or configs/<file>.py:<arg>")
    parser.add_argument(
        "--workdir", required=True, help="run directory (created; resumed if it has checkpoints)"
    )
    args, rest = parser.parse_known_args(argv)
    try:
        config = load_config(args.config)
        unknown = apply_overrides(config, rest)
    except (ValueError, FileNotFoundError, AttributeError, KeyError) as e:
        parser.error(str(e.args[0] if e.args else e))
    if unknown:
        parser.error(
            f"unrecognised arguments: {' '.join(unknown)} (overrides look like --config.optim.lr=1e-3)"
        )

    # After the argument checks: importing JAX takes time. Connecting the processes of a multi-process run
    # comes before anything asks JAX for its devices.
    from rwkv_jax.training import distributed
    from rwkv_jax.training.loop import train_and_evaluate

    distributed.initialize(config.distributed)
    results = train_and_evaluate(config, args.workdir)
    if not distributed.is_primary():
        return 0
    r = results
    print(f"trained steps {r['start_step']} -> {r['final_step']} in {r['train_seconds']:.0f} s")
    if "val_loss" in r:
        print(
            f"validation loss {r['val_loss']:.4f} nats/token, perplexity {r['val_perplexity']:.3f}, "
            f"{r['val_bits_per_byte']:.4f} bits/byte"
        )
    if "sample" in results:
        print(f"sample:\n{config.eval.sample_prompt}{results['sample']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
