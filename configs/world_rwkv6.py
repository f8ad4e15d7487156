r"""Eagle (RWKV-5.2) and Finch (RWKV-6), binidx data, World tokenizer: the sizes of arXiv 2404.05892.

    python experiments/train.py --config configs/world_rwkv6.py:size=finch-1b6 --workdir workdir/finch1b6 \
        --config.data.train_path=/data/world_text_document --config.mesh.fsdp=8

``:size=`` one of eagle-0b4, eagle-1b5, eagle-3b, eagle-7b, finch-1b6, finch-3b1 (rwkv_jax.presets);
``:runlocal`` trains the byte-level ``finch-tiny`` on Shakespeare for a few steps instead. Long contexts are
trained in segments that carry the state (``segments.length``), each segment rematerialised.
"""

from rwkv_jax.training.config import ConfigDict, default_config, model_section, parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, size="finch-1b6", runlocal=False)
    c = default_config()
    c.model = model_section(preset="finch-tiny" if arg.runlocal else arg.size)
    c.model.dtype = "bfloat16"
    c.model.wkv_impl = "auto"
    c.model.chunk_size = 64

    c.data.train_path = ""  # the binidx prefix of the tokenized corpus (set on the command line)
    c.data.tokenizer = "world"
    c.data.seq_len = 4096
    c.data.batch_size = 8
    c.segments.length = 1024
    c.segments.truncate = False
    c.loss.l2wrap = 1e-4

    c.optim.lr = 6e-4
    c.optim.final_lr_ratio = 0.1
    c.optim.warmup_steps = 1000
    c.optim.weight_decay = 0.1
    c.train.steps = 100_000
    c.ckpt.every = 1000
    c.eval.every = 1000
    c.eval.sample_tokens = 0

    if arg.runlocal:
        c.data.prepare = "shakespeare"
        c.data.tokenizer = "byte"
        c.data.seq_len, c.data.batch_size, c.segments.length = 64, 4, 32
        c.optim.lr, c.optim.warmup_steps = 3e-3, 5
        c.train.steps, c.ckpt.every, c.eval.every, c.eval.batches = 20, 10, 10, 2
    return c
