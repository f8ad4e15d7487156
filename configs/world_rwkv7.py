r"""RWKV-7 "Goose", binidx data, World tokenizer: the sizes of the released World and G1 checkpoints.

    python experiments/train.py --config configs/world_rwkv7.py:size=goose-1b5 --workdir workdir/goose1b5 \
        --config.data.train_path=/data/world_text_document --config.mesh.fsdp=8

``:size=`` one of goose-0b1, goose-0b4, goose-1b5, goose-2b9, goose-7b2, goose-13b3 (rwkv_jax.presets; the
LoRA ranks of the released files); ``:runlocal`` trains the byte-level ``goose-tiny`` on Shakespeare for a
few steps instead. Long contexts are trained in segments that carry the state (``segments.length``), each
segment rematerialised.
"""

from rwkv_jax.training.config import ConfigDict, model_section, parse_arg
from rwkv_jax.training.recipes import pretraining_config


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, size="goose-1b5", runlocal=False)
    model = model_section(preset="goose-tiny" if arg.runlocal else arg.size)
    # RWKV-7 decays at most e^-0.61 a step: chunks of 32 steps stay far inside float32
    return pretraining_config(model, arg.runlocal, chunk_size=32)
