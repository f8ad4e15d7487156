r"""RWKV-7 "Goose" on Shakespeare's works, byte level: the Goose twin of the CPU demo (docs/demo.md).

    python experiments/train.py --config configs/shakespeare_goose.py --workdir workdir/goose_demo

The same data, batches and budget as configs/shakespeare_finch.py. Variants: ``:size=<preset>`` picks
another Goose size (``goose-tiny``, ...: see rwkv_jax/models/rwkv7/presets.py); ``:runlocal`` trains a few
steps of the tiny model (a smoke test). Any field can be overridden, e.g. ``--config.optim.lr=2e-3``.
"""

from rwkv_jax.training.config import ConfigDict, model_section, parse_arg
from rwkv_jax.training.recipes import demo_config


def get_config(arg: str | None = None) -> ConfigDict:
    arg = parse_arg(arg, size="goose-demo", runlocal=False)
    model = model_section(preset="goose-tiny" if arg.runlocal else arg.size)
    return demo_config(model, arg.runlocal)
