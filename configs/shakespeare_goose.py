r"""RWKV-7 "Goose" on Shakespeare's works, byte level: the Goose twin of the CPU demo (docs/demo.md).

    python experiments/train.py --config configs/shakespeare_goose.py --workdir workdir/goose_demo

The same data, batches and budget as configs/shakespeare_finch.py. Variants: ``:size=<preset>`` picks
another Goose size (``goose-tiny``, ...: see rwkv_jax/models/rwkv7/presets.py); ``:runlocal`` trains a few
steps of the tiny model (a smoke test). Any field can be overridden, e.g. ``--config.optim.lr=2e-3``.
"""

from rwkv_jax.training.config import ConfigDict, default_config, model_section, parse_arg


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, size="goose-demo", runlocal=False)
    c = default_config()
    c.model = model_section(preset="goose-tiny" if arg.runlocal else arg.size)
    c.model.dtype = "bfloat16"  # parameters and optimiser state stay float32
    c.model.wkv_impl = "chunked"
    c.model.chunk_size = 32

    c.data.prepare = "shakespeare"
    c.data.dir = "data/shakespeare"
    c.data.seq_len = 128
    c.data.batch_size = 8

    c.optim.lr = 3e-3  # measured (docs/demo.md): 2e-3 ends at 1.503, 4e-3 was behind at step 900
    c.optim.warmup_steps = 30
    c.optim.schedule = "cosine"
    c.optim.final_lr_ratio = 0.05

    c.train.steps = 1800  # measured: validation loss 1.494 nats/byte (docs/demo.md)
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
