r"""The base of the ablation notebooks: a small byte-level model on Shakespeare, one token budget for all.

    python experiments/train.py --config configs/ablation.py:setting=full --workdir workdir/ablation
    python experiments/train.py --config configs/ablation.py:setting=full,family=rwkv7 --workdir ...

``setting=ci`` (the default) is the smoke size the test suite runs the notebooks at (seconds per variant);
``setting=full`` is the size of the results in docs/ablations.md (about a minute per run on 2 CPU cores).
``family=`` picks the family of the base model (default Finch), ``size=<preset>`` a published size instead of
the setting's; ``runlocal`` is ``setting=ci``. The notebooks change the model section per variant
(``rwkv_jax.training.ablation``) and keep everything else, so every variant sees the same batches.
"""

from rwkv_jax.training.config import ConfigDict, default_config, model_section, parse_arg

SETTINGS = {
    # setting: (n_layer, n_embd, head_size, seq_len, batch_size, steps, eval_every, eval_batches)
    "ci": (1, 32, 16, 32, 4, 12, 12, 1),
    "full": (2, 128, 32, 128, 8, 400, 100, 8),
}


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, setting="ci", family="rwkv6", size="", runlocal=False)
    if arg.runlocal:
        arg.setting = "ci"
    if arg.setting not in SETTINGS:
        raise ValueError(f"setting must be one of {sorted(SETTINGS)}, got {arg.setting!r}")
    n_layer, n_embd, head_size, seq_len, batch_size, steps, eval_every, eval_batches = SETTINGS[arg.setting]
    c = default_config()
    if arg.size:
        c.model = model_section(preset=arg.size, dtype="float32")
    else:
        c.model = model_section(arg.family, n_layer=n_layer, n_embd=n_embd, vocab_size=256, dtype="float32")
        if "head_size" in c.model:
            c.model.head_size = head_size
    if "chunk_size" in c.model:
        c.model.chunk_size = 16 if arg.setting == "ci" else 32

    c.data.prepare = "shakespeare"
    c.data.dir = "data/shakespeare"
    c.data.seq_len, c.data.batch_size = seq_len, batch_size

    c.optim.lr = 3e-3
    c.optim.warmup_steps = max(steps // 10, 1)
    c.optim.final_lr_ratio = 0.1

    c.train.steps = steps
    c.train.log_every = max(steps // 40, 1)
    c.train.progress = False
    c.ckpt.every = 0  # only the final checkpoint
    c.ckpt.keep = 1
    c.eval.every = eval_every
    c.eval.batches = eval_batches
    c.eval.sample_tokens = 0
    return c
