r"""Runs lm-evaluation-harness tasks on any rwkv_jax checkpoint (needs ``pip install -e .[eval]``).

    python experiments/lm_eval.py --model_args path=RWKV-x070-World-1.5B.pth,tokenizer=world,dtype=bfloat16 \
        --tasks lambada_openai --batch_size 16 --output_path results/
    python experiments/lm_eval.py --model_args path=workdir/demo --tasks my_task --include_path my_tasks/ \
        --limit 50 --num_fewshot 0 --log_samples --output_path results/

Every argument is lm-eval's own (``lm-eval run --help``), passed through as is; this script adds
``--model rwkv_jax``, the adapter of :mod:`rwkv_jax.evaluation.lm_eval_adapter` (its model_args are listed
there: path = a ``.pth``, a ``.safetensors``, a Hugging Face folder or a training workdir). Tasks of the
standard suites download their data from the Hugging Face hub on first use; offline, use local task files
with ``--include_path`` (YAML whose ``dataset_path: json`` reads local ``data_files``).
"""

import pathlib
import sys

# This file is named like the package it drives: take its own folder off the path before importing lm_eval.
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != _HERE]


def main(argv: list[str]) -> int:
    """Runs lm-eval's command line with ``--model rwkv_jax`` and ``argv``."""
    from lm_eval.__main__ import cli_evaluate

    import rwkv_jax.evaluation.lm_eval_adapter  # noqa: F401  (registers the model "rwkv_jax")

    if "--model" in argv:
        raise SystemExit(
            "--model is set by this script (rwkv_jax); pass the checkpoint as --model_args path=..."
        )
    sys.argv = ["lm-eval", "run", "--model", "rwkv_jax", *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
