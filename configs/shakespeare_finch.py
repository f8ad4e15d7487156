r"""Finch (RWKV-6) on Shakespeare's works, byte level: the CPU demo (measured times in docs/demo.md).

    python experiments/train.py --config configs/shakespeare_finch.py --workdir workdir/demo

The first run downloads and prepares the data (``data/shakespeare/{train,val}.{bin,idx}``). Variants:
``:size=<preset>`` picks another Eagle/Finch size (``finch-tiny``, ``eagle-tiny``, ...: see
rwkv_jax/models/rwkv6/presets.py); ``:runlocal`` trains a few steps of the tiny model (a smoke test).
Any field can be overridden, e.g. ``--config.optim.lr=2e-3 --config.train.steps=400``.
"""

from rwkv_jax.training.config import ConfigDict, model_section, parse_arg
from rwkv_jax.training.recipes import demo_config


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, size="finch-demo", runlocal=False)
    model = model_section(preset="finch-tiny" if arg.runlocal else arg.size)
    model.time_mix_extra_dim = 16  # smaller LoRA ranks than the published 32/64: the model is tiny
    model.time_decay_extra_dim = 32
    return demo_config(model, arg.runlocal)
