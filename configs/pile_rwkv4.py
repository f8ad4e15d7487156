r"""RWKV-4 on the Pile (binidx, GPT-NeoX 20B tokenizer), the sizes of arXiv 2305.13048.

    python experiments/train.py --config configs/pile_rwkv4.py:size=rwkv4-169m --workdir workdir/pile169m \
        --config.data.train_path=/data/pile_text_document

``:size=`` one of rwkv4-169m, rwkv4-430m, rwkv4-1b5, rwkv4-3b, rwkv4-7b, rwkv4-14b (rwkv_jax.presets);
``:runlocal`` trains the byte-level ``rwkv4-tiny`` on Shakespeare for a few steps instead.
Optimiser as RWKV-LM's RWKV-4 runs: Adam betas (0.9, 0.99), eps 1e-8, warmup then decay, clip 1.0.
"""

from rwkv_jax.training.config import ConfigDict, default_config, model_section, parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, size="rwkv4-169m", runlocal=False)
    c = default_config()
    c.model = model_section(preset="rwkv4-tiny" if arg.runlocal else arg.size)
    c.model.dtype = "bfloat16"
    c.model.wkv_impl = "auto"

    c.data.train_path = ""  # the binidx prefix of the tokenized Pile (set on the command line)
    c.data.tokenizer = "byte"  # only for text inputs; binidx files are already tokenized
    c.data.seq_len = 1024
    c.data.batch_size = 8
    c.loss.l2wrap = 1e-4

    c.optim.lr = 6e-4
    c.optim.final_lr_ratio = 0.1
    c.optim.warmup_steps = 1000
    c.optim.weight_decay = 0.0
    c.optim.accum_steps = 1
    c.train.steps = 100_000
    c.ckpt.every = 1000
    c.eval.every = 1000
    c.eval.sample_tokens = 0

    if arg.runlocal:
        c.data.prepare = "shakespeare"
        c.data.seq_len, c.data.batch_size = 64, 4
        c.optim.lr, c.optim.warmup_steps = 3e-3, 5
        c.train.steps, c.ckpt.every, c.eval.every, c.eval.batches = 20, 10, 10, 2
    return c
