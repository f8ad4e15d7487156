r"""RWKV-7 "Goose", binidx data, World tokenizer: the sizes of the released World and G1 checkpoints.

    python experiments/train.py --config configs/world_rwkv7.py:size=goose-1b5 --workdir workdir/goose1b5 \
        --config.data.train_path=/data/world_text_document --config.mesh.fsdp=8

``:size=`` one of goose-0b1, goose-0b4, goose-1b5, goose-2b9, goose-7b2, goose-13b3 (rwkv_jax.presets; the
LoRA ranks of the released files); ``:runlocal`` trains the byte-level ``goose-tiny`` on Shakespeare for a
few steps instead. Long contexts are trained in segments that carry the state (``segments.length``), each
segment rematerialised.
"""

from rwkv_jax.training.config import ConfigDict, default_config, model_section, parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, size="goose-1b5", runlocal=False)
    c = default_config()
    c.model = model_section(preset="goose-tiny" if arg.runlocal else arg.size)
    c.model.dtype = "bfloat16"
    c.model.wkv_impl = "auto"
    c.model.chunk_size = 32  # RWKV-7 decays at most e^-0.61 a step: 32 steps stay far inside float32

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
    c.optim.weight_decay = 0.1  # matrices only, no LoRA (optim.wd_exclude_axes), as RWKV-LM's "wdecay"
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
