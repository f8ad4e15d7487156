r"""Eagle (RWKV-5.2) and Finch (RWKV-6), binidx data, World tokenizer: the sizes of arXiv 2404.05892.

    python experiments/train.py --config configs/world_rwkv6.py:size=finch-1b6 --workdir workdir/finch1b6 \
        --config.data.train_path=/data/world_text_document --config.mesh.fsdp=8

``:size=`` one of eagle-0b4, eagle-1b5, eagle-3b, eagle-7b, finch-1b6, finch-3b1 (rwkv_jax.presets);
``:runlocal`` trains the byte-level ``finch-tiny`` on Shakespeare for a few steps instead. Long contexts are
trained in segments that carry the state (``segments.length``), each segment rematerialised.
"""

from rwkv_jax.training.config import ConfigDict, model_section, parse_arg
from rwkv_jax.training.recipes import pretraining_config


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, size="finch-1b6", runlocal=False)
    model = model_section(preset="finch-tiny" if arg.runlocal else arg.size)
    return pretraining_config(model, arg.runlocal, chunk_size=64)
