r"""Finch (RWKV-6) on Shakespeare's works, byte level: the CPU demo (measured times in docs/demo.md).

    python experiments/train.py --config configs/shakespeare_finch.py --workdir workdir/demo

The first run downloads and prepares the data (``data/shakespeare/{train,val}.{bin,idx}``). Variants:
``:size=<preset>`` picks another Eagle/Finch size (``finch-tiny``, ``eagle-tiny``, ...: see
rwkv_jax/models/rwkv6/presets.py); ``:runlocal`` trains a few steps of the tiny model (a smoke test).
Any field can be overridden, e.g. ``--config.optim.lr=2e-3 --config.train.steps=400``.
"""

from rwkv_jax.training.config import ConfigDict, default_config, model_section, parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, size="finch-demo", runlocal=False)
    c = default_config()
    c.model = model_section(preset="finch-tiny" if arg.runlocal else arg.size)
    c.model.time_mix_extra_dim = 16  # smaller LoRA ranks than the published 32/64: the model is tiny
    c.model.time_decay_extra_dim = 32
    c.model.dtype = "bfloat16"  # parameters and optimiser state stay float32; faster here (docs/demo.md)
    c.model.wkv_impl = "chunked"
    c.model.chunk_size = 32

    c.data.prepare = "shakespeare"
    c.data.dir = "data/shakespeare"
    c.data.seq_len = 128
    c.data.batch_size = 8

    c.optim.lr = 3e-3
    c.optim.warmup_steps = 30
    c.optim.schedule = "cosine"
    c.optim.final_lr_ratio = 0.05

    c.train.steps = 1800  # measured: validation loss 1.48 nats/byte (docs/demo.md)
    c.train.max_seconds = 420.0  # a safety net for a busy machine: stop, evaluate and save after 7 min
    c.train.log_every = 10
    c.ckpt.every = 600
    c.eval.every = 300
    c.eval.batches = 16
    c.eval.sample_tokens = 300
    c.eval.sample_prompt = "ROMEO.\n"
    c.eval.temperature = 0.7  # greedy decoding of a model this small loops on one phrase

    if arg.runlocal:
        c.data.seq_len, c.data.batch_size = 64, 4
        c.train.steps, c.ckpt.every, c.eval.every, c.eval.batches = 20, 10, 10, 2
        c.eval.sample_tokens = 20
    return c
