r"""Fine-tunes a released model: state tuning, LoRA, PiSSA or every weight, on text or binidx data.

    python experiments/train.py --config configs/finetune.py:base=RWKV-x070.pth,method=state \
        --workdir workdir/ft --config.data.train_path=train.txt --config.data.val_path=val.txt

``base``: an official ``.pth`` / ``.safetensors`` file or Hugging Face folder (required); the model section
(family, sizes) is read from it. ``method``: ``state`` (the per-layer initial state, RWKV-PEFT's state
tuning), ``lora``, ``pissa`` or ``none`` (every weight); see docs/finetune.md. ``data``/``val``: a text file,
a folder of ``.txt`` files or a binidx prefix (default: Shakespeare, byte level, for the byte-level models of
../shared/fixtures). ``tokenizer``: ``byte``, ``world`` or a tokenizer file (text data only). ``steps``,
``lr`` (0: the method's default), ``seq_len``, ``batch``. Any field can be overridden with ``--config.*``.
"""

from rwkv_jax.finetune.training import base_model_section
from rwkv_jax.training.config import ConfigDict, default_config, parse_arg

# Learning rates per method: a state has no scale of its own to keep (RWKV-PEFT uses up to 1 for it),
# adapters are small, full fine-tuning must not undo pretraining.
DEFAULT_LR = {"state": 1e-2, "lora": 1e-3, "pissa": 1e-4, "none": 1e-4}


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(
        arg,
        base="",
        method="state",
        data="",
        val="",
        tokenizer="byte",
        steps=200,
        lr=0.0,
        seq_len=128,
        batch=8,
    )
    if not arg.base:
        raise ValueError("configs/finetune.py needs base=PATH (an official checkpoint to fine-tune)")
    c = default_config()
    c.model = base_model_section(arg.base, dtype="bfloat16")  # the WKV form: auto
    c.finetune.method = arg.method
    c.finetune.base = arg.base
    if arg.data:
        c.data.train_path, c.data.val_path = arg.data, arg.val
    else:
        c.data.prepare, c.data.dir = "shakespeare", "data/shakespeare"
    c.data.tokenizer = arg.tokenizer
    c.data.seq_len, c.data.batch_size = arg.seq_len, arg.batch
    c.data.document_starts = True  # packed samples do not see each other
    c.optim.lr = arg.lr or DEFAULT_LR.get(arg.method, 1e-4)
    c.optim.warmup_steps = min(10, arg.steps)
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 0.0
    c.train.steps = arg.steps
    c.train.log_every = 10
    c.ckpt.every = max(arg.steps // 2, 1)
    c.eval.every = max(arg.steps // 4, 1)
    c.eval.batches = 8
    c.eval.sample_tokens = 0
    return c
