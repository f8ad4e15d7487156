r"""Checks that a fine-tuning run resumes exactly: killed while saving step 4, resumed from step 2, it logs
every value an uninterrupted run logs and ends with bit-equal trained parameters.

    python experiments/check_finetune_resume.py BASE.pth [--method state|lora|pissa] [--workdir DIR]

``BASE.pth``: an official checkpoint of a byte-level model (e.g. ../shared/fixtures/tiny-rwkv/*.pth). The
text is synthetic word salad written into the workdir. Six steps of 4 x 32 tokens, a checkpoint every 2.
Prints one line and exits 1 on a difference. (The suite's resume tests run the same loop on a fresh model;
this is the fine-tuning path: trained variables in the checkpoint, frozen ones read from the base again.)
"""

import argparse
import json
import pathlib
import shutil
import sys
import tempfile


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base")
    parser.add_argument("--method", default="state", choices=("state", "lora", "pissa", "none"))
    parser.add_argument("--workdir", default="")
    args = parser.parse_args(argv)

    import jax
    import numpy as np

    from rwkv_jax.training import loop
    from rwkv_jax.training.checkpointing import Checkpoints
    from rwkv_jax.training.config import load_config
    from rwkv_jax.training.evaluate import load_run
    from tests.training.conftest import synthetic_text

    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="ft_resume_"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_bytes(synthetic_text(1, 4000))
    (root / "val.txt").write_bytes(synthetic_text(2, 800))
    spec = (
        f"configs/finetune.py:base={args.base},method={args.method},steps=6,seq_len=32,batch=4,"
        f"data={root}/train.txt,val={root}/val.txt"
    )

    def config():
        c = load_config(spec)
        c.ckpt.every, c.eval.every, c.train.progress = 2, 0, False
        c.finetune.lora_targets = "att.key,ffn.value"
        return c

    def logged(workdir: pathlib.Path) -> list[tuple]:
        records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [
            (r["step"], k, v) for r in records for k, v in r.items() if k not in ("step", "tokens_per_second")
        ]

    uninterrupted, resumed = root / "uninterrupted", root / "resumed"
    for workdir in (uninterrupted, resumed):
        shutil.rmtree(workdir, ignore_errors=True)
    loop.train_and_evaluate(config(), uninterrupted)
    save = Checkpoints.save

    def killed_at_step_4(self, step, params, opt_state):
        if step == 4:
            raise KeyboardInterrupt
        save(self, step, params, opt_state)

    Checkpoints.save = killed_at_step_4
    try:
        loop.train_and_evaluate(config(), resumed)
    except KeyboardInterrupt:
        pass
    Checkpoints.save = save
    start = loop.train_and_evaluate(config(), resumed)["start_step"]
    reference = {(step, name): value for step, name, value in logged(uninterrupted)}
    values_equal = all(reference.get((step, name)) == value for step, name, value in logged(resumed))
    a, b = load_run(uninterrupted)[1], load_run(resumed)[1]
    bit_equal = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    print(
        f"{args.method}: resumed from step {start}; every logged value equal: {values_equal}; "
        f"final parameters bit-equal: {bit_equal}"
    )
    return 0 if start == 2 and values_equal and bit_equal else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
