"""The training recipes the configs in configs/ share: one function per kind of run, a model section in.

    c = pretraining_config(model_section(preset="goose-1b5"), chunk_size=32)   # configs/world_rwkv7.py
    c = demo_config(model_section(preset="finch-demo"))                       # configs/shakespeare_finch.py

Each returns a full training config (``default_config()`` with the recipe's fields set) that the config file
may change further; ``runlocal`` shrinks it to a smoke test of a few steps on Shakespeare.
"""

from rwkv_jax.training.config import ConfigDict, default_config


def _runlocal(c: ConfigDict) -> None:
    """A few steps of small batches with evaluation and checkpoints (a smoke test)."""
    c.train.steps, c.ckpt.every, c.eval.every, c.eval.batches = 20, 10, 10, 2


def demo_config(model: ConfigDict, runlocal: bool = False) -> ConfigDict:
    """The CPU demo's training config (configs/shakespeare_*.py) for the ``config.model`` section ``model``.

    Byte-level Shakespeare, 1800 steps of 8 x 128 tokens, bfloat16 compute with the chunked WKV (chunks of
    32), AdamW 3e-3 with a cosine decay, a 7-minute safety cap, validation and a sample every 300 steps
    (measured results: docs/demo.md). ``runlocal``: a few steps of smaller batches (a smoke test).
    """
    c = default_config()
    c.model = model
    c.model.dtype = "bfloat16"  # parameters and optimiser state stay float32; faster here (docs/demo.md)
    c.model.wkv_impl = "chunked"
    c.model.chunk_size = 32

    c.data.prepare = "shakespeare"
    c.data.dir = "data/shakespeare"
    c.data.seq_len = 128
    c.data.batch_size = 8

    c.optim.lr = 3e-3  # measured on Goose (docs/demo.md): 2e-3 ends at 1.503, 4e-3 was behind at step 900
    c.optim.warmup_steps = 30
    c.optim.schedule = "cosine"
    c.optim.final_lr_ratio = 0.05

    c.train.steps = 1800  # measured: validation 1.48 (Finch) and 1.494 (Goose) nats/byte (docs/demo.md)
    c.train.max_seconds = 420.0  # a safety net for a busy machine: stop, evaluate and save after 7 min
    c.train.log_every = 10
    c.ckpt.every = 600
    c.eval.every = 300
    c.eval.batches = 16
    c.eval.sample_tokens = 300
    c.eval.sample_prompt = "ROMEO.\n"
    c.eval.temperature = 0.7  # greedy decoding of a model this small loops on one phrase

    if runlocal:
        c.data.seq_len, c.data.batch_size = 64, 4
        _runlocal(c)
        c.eval.sample_tokens = 20
    return c


def pretraining_config(
    model: ConfigDict,
    runlocal: bool = False,
    *,
    tokenizer: str = "world",
    seq_len: int = 4096,
    segment_len: int = 1024,
    weight_decay: float = 0.1,
    chunk_size: int | None = None,
) -> ConfigDict:
    """Pretraining as RWKV-LM runs it on binidx data: bfloat16 compute, AdamW 6e-4 with 1000 warmup updates
    decaying to 6e-5, L2Wrap 1e-4, batches of 8 x ``seq_len`` tokens in segments of ``segment_len`` (0: none)
    that carry the state, 100,000 steps, a checkpoint and a validation every 1000.

    ``data.train_path`` (the binidx prefix) is left empty for the command line. ``weight_decay`` applies to
    the matrices only, not LoRA (``optim.wd_exclude_axes``), as RWKV-LM's ``wdecay``. ``chunk_size``: the
    chunk of the WKV forms (None: the model section's). ``runlocal``: the byte-level Shakespeare smoke test.
    """
    c = default_config()
    c.model = model
    c.model.dtype = "bfloat16"
    c.model.wkv_impl = "auto"
    if chunk_size is not None:
        c.model.chunk_size = chunk_size

    c.data.train_path = ""  # the binidx prefix of the tokenized corpus (set on the command line)
    c.data.tokenizer = tokenizer  # for text inputs only: binidx files are already tokenized
    c.data.seq_len = seq_len
    c.data.batch_size = 8
    c.segments.length = segment_len
    c.segments.truncate = False
    c.loss.l2wrap = 1e-4

    c.optim.lr = 6e-4
    c.optim.final_lr_ratio = 0.1
    c.optim.warmup_steps = 1000
    c.optim.weight_decay = weight_decay
    c.train.steps = 100_000
    c.ckpt.every = 1000
    c.eval.every = 1000
    c.eval.sample_tokens = 0

    if runlocal:
        c.data.prepare = "shakespeare"
        c.data.tokenizer = "byte"
        c.data.seq_len, c.data.batch_size = 64, 4
        if segment_len:
            c.segments.length = 32
        c.optim.lr, c.optim.warmup_steps = 3e-3, 5
        _runlocal(c)
    return c
