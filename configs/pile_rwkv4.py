r"""RWKV-4 on the Pile (binidx, GPT-NeoX 20B tokenizer), the sizes of arXiv 2305.13048.

    python experiments/train.py --config configs/pile_rwkv4.py:size=rwkv4-169m --workdir workdir/pile169m \
        --config.data.train_path=/data/pile_text_document

``:size=`` one of rwkv4-169m, rwkv4-430m, rwkv4-1b5, rwkv4-3b, rwkv4-7b, rwkv4-14b (rwkv_jax.presets);
``:runlocal`` trains the byte-level ``rwkv4-tiny`` on Shakespeare for a few steps instead.
Optimiser as RWKV-LM's RWKV-4 runs: Adam betas (0.9, 0.99), eps 1e-8, warmup then decay, clip 1.0.
"""

from rwkv_jax.training.config import ConfigDict, model_section, parse_arg
from rwkv_jax.training.recipes import pretraining_config


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, size="rwkv4-169m", runlocal=False)
    model = model_section(preset="rwkv4-tiny" if arg.runlocal else arg.size)
    return pretraining_config(
        model, arg.runlocal, tokenizer="byte", seq_len=1024, segment_len=0, weight_decay=0.0
    )
