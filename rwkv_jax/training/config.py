"""The training config: every field with its default, loading ``configs/<file>.py:<arg>``, and overrides.

A config file is a Python file with ``get_config(arg=None) -> ConfigDict`` that starts from
:func:`default_config` (locked, so a misspelt field fails where it is set) and changes what it needs.
``arg`` is a comma-separated list of ``key=value`` pairs and bare flags (``size=finch-1b6,runlocal``),
parsed by :func:`parse_arg`. Command-line overrides (``--config.optim.lr=1e-3``) go through
:func:`apply_override`, which rejects an unknown key with the nearest valid keys (difflib) and converts the
value to the field's type.
"""

import ast
import difflib
import importlib.util
import pathlib
from typing import Any

import ml_collections

from rwkv_jax.presets import get_preset

ConfigDict = ml_collections.ConfigDict


def default_config() -> ConfigDict:
    """Every field a training run reads, with its default (the tiny end of every range)."""
    c = ConfigDict()
    c.seed = 0  # seeds the parameter init and the batch order (a pure function of (seed, step))

    c.model = ConfigDict()
    c.model.family = "rwkv6"  # "rwkv4" | "rwkv6" (RWKV6 covers Eagle and Finch) | "rwkv7" (Goose)
    c.model.version = "6"  # rwkv6 only: "5.2" (Eagle) or "6" (Finch)
    c.model.n_layer = 2
    c.model.n_embd = 64
    c.model.head_size = 32  # rwkv6 and rwkv7: channels per head (64 in every published model)
    c.model.vocab_size = 256
    c.model.ffn_dim = 0  # 0: the family's default (4 x n_embd for RWKV-4, 3.5 x n_embd for Eagle/Finch)
    c.model.time_mix_extra_dim = 0  # Finch ddlerp LoRA rank; 0: the model's default (32)
    c.model.time_decay_extra_dim = 0  # Finch decay LoRA rank; 0: the model's default (64)
    c.model.dtype = "bfloat16"  # compute dtype; parameters and optimiser state stay float32
    c.model.wkv_impl = "auto"  # rwkv_jax.Impl name: auto | recurrent | scan | chunked | pallas
    c.model.chunk_size = (
        32  # rwkv6 / rwkv7 chunked WKV: tokens per chunk (RWKV-7 needs <= 98, see v7_chunked)
    )

    c.data = ConfigDict()
    c.data.prepare = ""  # "shakespeare": build train/val files under data.dir when they are missing
    c.data.dir = "data/shakespeare"  # where `prepare` writes
    c.data.train_path = ""  # binidx prefix (prefix.idx exists), text file or folder of .txt files
    c.data.val_path = ""  # same kinds; empty: no validation
    c.data.tokenizer = "byte"  # for text inputs: "byte" | "world" | path to a tokenizer file
    c.data.seq_len = 128  # tokens per training sequence (the model sees seq_len inputs, seq_len targets)
    c.data.batch_size = 8  # sequences per micro-batch (per optimiser step without accumulation)

    c.optim = ConfigDict()
    c.optim.lr = 3e-3  # peak learning rate
    c.optim.final_lr_ratio = 0.1  # the schedule ends at lr * final_lr_ratio
    c.optim.warmup_steps = 50  # linear warmup from 0 (optimiser updates)
    c.optim.schedule = "cosine"  # decay after warmup: "cosine" | "linear" | "constant"
    c.optim.b1 = 0.9
    c.optim.b2 = 0.99  # RWKV-LM's default
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0  # applied to 2-D matrices only (see optim.weight_decay_mask)
    c.optim.wd_exclude_axes = ("lora", "head_dim")  # 2-D parameters with one of these axes get no decay
    c.optim.clip_norm = 1.0  # global gradient norm clip; 0 disables
    c.optim.accum_steps = 1  # micro-batches per update (optax.MultiSteps)

    c.loss = ConfigDict()
    c.loss.l2wrap = 0.0  # RWKV-LM's L2Wrap coefficient (1e-4 there); 0 disables

    c.segments = ConfigDict()
    c.segments.length = 0  # > 0: cut each sequence into segments of this many tokens, carrying the state
    c.segments.truncate = False  # True: stop_gradient on the carried state; False: exact gradient (remat)

    c.train = ConfigDict()
    c.train.steps = 100  # micro-batch steps (each reads one batch); updates = steps / accum_steps
    c.train.max_seconds = 0.0  # > 0: stop early after this much training wall time (then evaluate, save)
    c.train.log_every = 10  # steps between JSONL/TensorBoard records
    c.train.progress = True  # tqdm progress bar on stderr

    c.ckpt = ConfigDict()
    c.ckpt.every = 50  # steps between checkpoints (and one at the end); 0: only the final one
    c.ckpt.keep = 3  # checkpoints kept

    c.eval = ConfigDict()
    c.eval.every = 50  # steps between validation passes (and one at the end); 0: only the final one
    c.eval.batches = 8  # validation batches per pass (fixed, the same ones every pass)
    c.eval.sample_tokens = 200  # tokens generated after each validation pass; 0: none
    c.eval.sample_prompt = "ROMEO.\n"
    c.eval.temperature = 0.0  # 0: greedy

    c.mesh = ConfigDict()
    c.mesh.data = -1  # -1: every device not used by the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # Logical axis -> mesh axis (or None: replicated). Only the config names mesh axes.
    c.sharding_rules = (
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("head_dim", None),
        ("lora", None),
    )

    # Multi-process runs (rwkv_jax.training.distributed): every process runs the same command and config,
    # with its own process_id. An empty coordinator address lets JAX find the cluster (TPU pod, Slurm, ...).
    c.distributed = ConfigDict()
    c.distributed.initialize = False  # False: one process
    c.distributed.coordinator_address = ""  # "host:port" of process 0
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.local_device_count = 0  # CPU only: devices this process exposes (0: JAX's default)
    c.lock()
    return c


def set_preset(model: ConfigDict, name: str) -> None:
    """Fills the ``config.model`` sizes from ``rwkv_jax.presets.PRESETS[name]``."""
    preset = get_preset(name)
    model.family, model.version = preset.family, preset.version
    model.n_layer, model.n_embd, model.vocab_size = preset.n_layer, preset.n_embd, preset.vocab_size
    model.head_size, model.ffn_dim = preset.head_size, preset.ffn_dim


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
    """Parses ``"size=finch-1b6,runlocal"`` into a ConfigDict over ``defaults`` (big_vision style).

    A bare word sets a boolean to True. Values are converted to the type of the default; a key with no
    default is an error naming the valid ones.
    """
    parsed = ConfigDict(dict(defaults))
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; {_nearest_hint(key, list(defaults))}")
        parsed[key] = _convert(value if sep else "True", defaults[key], key)
    return parsed


def load_config(spec: str) -> ConfigDict:
    """Loads ``path/to/file.py`` or ``path/to/file.py:arg`` by calling its ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {file} not found (expected configs/<name>.py[:arg])")
    module_spec = importlib.util.spec_from_file_location(f"_rwkv_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {file} defines no get_config(arg)")
    config = module.get_config(arg or None)
    validate(config)
    return config


def validate(config: ConfigDict) -> None:
    """Checks that ``config`` has only fields of :func:`default_config`; names the nearest valid ones."""
    valid = flat_keys(default_config())
    for key in flat_keys(config):
        if key not in valid:
            raise ValueError(f"unknown config key {key!r}; {_nearest_hint(key, valid)}")


def apply_override(config: ConfigDict, dotted_key: str, value: str) -> None:
    """Sets ``config.<dotted_key>`` from the string ``value``, converted to the field's current type."""
    valid = flat_keys(config)
    if dotted_key not in valid:
        raise ValueError(f"unknown config key {dotted_key!r}; {_nearest_hint(dotted_key, valid)}")
    *parents, leaf = dotted_key.split(".")
    holder = config
    for name in parents:
        holder = holder[name]
    with holder.unlocked():
        holder[leaf] = _convert(value, holder[leaf], dotted_key)


def apply_overrides(config: ConfigDict, argv: list[str]) -> list[str]:
    """Applies every ``--config.a.b=value`` in ``argv``; returns the other arguments."""
    rest = []
    for item in argv:
        if item.startswith("--config."):
            key, sep, value = item[len("--config.") :].partition("=")
            if not sep:
                raise ValueError(f"override {item!r} needs a value: --config.{key}=VALUE")
            apply_override(config, key, value)
        else:
            rest.append(item)
    return rest


def flat_keys(config: ConfigDict, prefix: str = "") -> list[str]:
    """Dotted names of every leaf field, e.g. ``["seed", "model.preset", ...]``."""
    keys = []
    for name, value in config.items():
        if isinstance(value, ConfigDict):
            keys.extend(flat_keys(value, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _nearest_hint(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not close:  # a misspelt leaf under a right section: compare the last component
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in valid if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.7)][:3]
    if close:
        return "nearest valid keys: " + ", ".join(close)
    return "valid keys: " + ", ".join(valid)


def _convert(text: str, default: Any, key: str) -> Any:
    """Converts the command-line ``text`` to the type of ``default``."""
    if isinstance(default, str):
        return text
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered not in ("true", "false", "1", "0"):
            raise ValueError(f"{key} expects a boolean (true/false), got {text!r}")
        return lowered in ("true", "1")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"{key} expects a {type(default).__name__}, got {text!r}") from None
    if isinstance(default, float) and isinstance(value, int | float):
        return float(value)
    if default is None or isinstance(value, type(default)):
        return value
    raise ValueError(f"{key} expects a {type(default).__name__}, got {text!r}")
