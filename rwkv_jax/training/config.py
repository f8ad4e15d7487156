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
import math
import os
import pathlib
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from rwkv_jax.models.family import get_family
from rwkv_jax.presets import get_preset

ConfigDict = ml_collections.ConfigDict


def default_config() -> ConfigDict:
    """Every field a training run reads, with its default (the tiny end of every range)."""
    c = ConfigDict()
    c.seed = 0  # seeds the parameter init and the batch order (a pure function of (seed, step))

    # The model: the family's own config fields, passed straight to its config class (Model(**config.model)).
    c.model = model_section("rwkv6", n_layer=2, n_embd=64, head_size=32, vocab_size=256, chunk_size=32)
    c.model.dtype = "bfloat16"  # compute dtype; parameters (param_dtype) and optimiser state stay float32

    c.data = ConfigDict()
    c.data.prepare = ""  # "shakespeare": build train/val files under data.dir when they are missing
    c.data.dir = "data/shakespeare"  # where `prepare` writes
    c.data.train_path = ""  # binidx prefix (prefix.idx exists), text file or folder of .txt files
    c.data.val_path = ""  # same kinds; empty: no validation
    c.data.tokenizer = "byte"  # for text inputs: "byte" | "world" | path to a tokenizer file
    c.data.seq_len = 128  # tokens per training sequence (the model sees seq_len inputs, seq_len targets)
    c.data.batch_size = 8  # sequences per micro-batch (per optimiser step without accumulation)
    # Reset the model's state at every document start inside a window (packed samples without cross-talk);
    # off for pretraining, on in configs/finetune.py. Needs segments.length 0.
    c.data.document_starts = False

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

    # Fine-tuning a released model (rwkv_jax.finetune.training, docs/finetune.md): "none" trains every
    # parameter; "state" only a per-layer initial state; "lora" / "pissa" only low-rank adapters.
    c.finetune = ConfigDict()
    c.finetune.method = "none"  # "none" | "state" | "lora" | "pissa"
    c.finetune.base = ""  # an official .pth / .safetensors / HF folder to start from ("": a fresh init)
    c.finetune.token_shift = False  # state: also tune the token-shift states (they fit a state file only)
    c.finetune.lora_targets = "att.receptance,att.key,att.value,att.output"  # lora / pissa: the layers
    c.finetune.lora_rank = 8
    c.finetune.lora_alpha = 16.0

    c.train = ConfigDict()
    c.train.steps = 100  # micro-batch steps (each reads one batch); updates = steps / accum_steps
    c.train.max_seconds = 0.0  # > 0: stop early after this much training wall time (then evaluate, save)
    c.train.log_every = 10  # steps between JSONL/TensorBoard records
    c.train.progress = True  # tqdm progress bar on stderr
    # Recompute each block's insides in the backward pass, keeping only its inputs (LanguageModel.
    # remat_blocks): activation memory / layers for ~1/3 more compute; what long windows on a pod need
    # (docs/pod_scale.md).
    c.train.remat_blocks = False

    c.ckpt = ConfigDict()
    c.ckpt.every = 50  # steps between checkpoints (and one at the end); 0: only the final one
    c.ckpt.keep = 3  # checkpoints kept

    c.eval = ConfigDict()
    c.eval.every = 50  # steps between validation passes (and one at the end); 0: only the final one
    c.eval.batches = 8  # validation batches per pass (fixed, the same ones every pass)
    c.eval.sample_tokens = 200  # tokens generated after each validation pass; 0: none
    c.eval.sample_prompt = "ROMEO.\n"
    c.eval.temperature = 0.0  # 0: greedy
    # lm-evaluation-harness tasks run at every validation pass, logged as lm_eval/<task>/<metric> (JSONL and
    # TensorBoard); needs the [eval] extra. Comma-separated names, "" for none.
    c.eval.lm_eval_tasks = ""
    c.eval.lm_eval_include_path = ""  # a folder of local lm-eval task files (YAML), "" for lm-eval's own only
    c.eval.lm_eval_limit = 0  # documents per task; 0: all

    c.mesh = ConfigDict()
    c.mesh.data = -1  # -1: every device not used by the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.context = 1  # > 1: the time axis of each sequence split over this many devices (Finch, Goose)
    # Logical axis -> mesh axis (or None: replicated). Only the config names mesh axes.
    c.sharding_rules = (
        ("batch", ("data", "fsdp")),
        ("sequence", "context"),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("head_dim", None),
        ("lora", None),
    )
    # Refuse to start when more than this fraction of the parameter bytes is left fully replicated on a mesh
    # with fsdp or tensor > 1 (rwkv_jax.training.sharding_check; 1.0 turns the check off).
    c.sharding_max_replicated = 0.05

    # Multi-process runs (rwkv_jax.training.distributed): every process runs the same command and config,
    # with its own process_id. An empty coordinator address lets JAX find the cluster (TPU pod, Slurm, ...).
    c.distributed = ConfigDict()
    c.distributed.initialize = False  # False: one process
    c.distributed.coordinator_address = ""  # "host:port" of process 0
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.local_device_count = 0  # CPU only: devices this process exposes (0: JAX's default)
    # A process that dies is noticed by the others after this many seconds without its heartbeat; they then
    # exit with an error instead of waiting in a collective forever (jax.distributed.initialize).
    c.distributed.heartbeat_timeout_seconds = 100
    c.distributed.initialization_timeout = 300  # seconds to wait for every process to connect
    c.lock()
    return c


def model_section(family: str | None = None, *, preset: str | None = None, **fields: Any) -> ConfigDict:
    """The ``config.model`` section: ``family`` and every field of that family's config class.

    Values are the config class's defaults (the published architecture), then the sizes of ``preset`` (which
    also names the family), then ``fields``. A field the family does not have is an error naming the nearest
    valid ones. The section is locked, so a misspelt field set later fails where it is set.
    """
    values: dict[str, Any] = {}
    if preset is not None:
        spec = get_preset(preset)
        if family is not None and family != spec.family:
            raise ValueError(f"preset {preset!r} is a {spec.family} size, not {family}")
        family, values = spec.family, dict(spec.fields)
    if family is None:
        raise ValueError("model_section needs a family or a preset")
    record = get_family(family)
    record.check_fields(fields)
    defaults = record.default_fields()
    if "param_dtype" in defaults:  # training keeps float32 master parameters whatever the compute dtype
        defaults["param_dtype"] = "float32"
    section = ConfigDict({"family": family, **defaults, **values, **fields})
    section.lock()
    return section


def switch_family(model: ConfigDict, family: str) -> ConfigDict:
    """A section for ``family`` that keeps every field of ``model`` the new family also has (sizes, dtypes,
    the WKV form), the others at the new family's defaults."""
    record = get_family(family)
    kept = {key: value for key, value in model.items() if key != "family" and key in record.field_names}
    return model_section(family, **kept)


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


def validate(config: ConfigDict, device_count: int | None = None) -> None:
    """Checks ``config`` before any work: only fields of :func:`default_config` and, in ``model``, only fields
    of its family's config class (naming the nearest valid ones), then every value (:func:`check_values`).

    ``device_count`` (``jax.device_count()``) also checks the mesh against the devices; None skips that
    check, so that loading a config asks JAX for no devices (a multi-process run connects its processes
    first).
    """
    valid = [key for key in flat_keys(default_config()) if not key.startswith("model.")]
    for key in flat_keys(config):
        if not key.startswith("model.") and key not in valid:
            raise ValueError(f"unknown config key {key!r}; {_nearest_hint(key, valid)}")
    model = dict(config.model.items())
    get_family(model.pop("family")).check_fields(model, what="config.model")
    check_values(config, device_count)


class ConfigError(ValueError):
    """A config value out of its valid range; the message names the field, the value and what is valid."""


def check_values(config: ConfigDict, device_count: int | None = None) -> None:
    """Checks every value of ``config`` (ranges, choices, divisibility, the model's own config class, the
    WKV form's chunk size); raises :class:`ConfigError` naming the field and what is valid.

    ``device_count`` is given at the start of a run: then the mesh is checked against the devices and the
    fields a config file may leave to the command line (``data.train_path``) must be set.
    """
    _check_fields(config, _RANGES)
    data, optim, segments = config.data, config.optim, config.segments
    if data.prepare not in ("", "shakespeare"):
        _fail("data.prepare", data.prepare, "'shakespeare' or '' (paths given by data.train_path)")
    if device_count is not None and not data.prepare and not data.train_path:  # a file may leave it to a flag
        _fail("data.train_path", data.train_path, "a binidx prefix, a text file or a folder of .txt files")
    if optim.schedule not in _SCHEDULES:
        _fail("optim.schedule", optim.schedule, f"one of {_SCHEDULES}")
    if segments.length and data.seq_len % segments.length:
        _fail("segments.length", segments.length, f"0 or a divisor of data.seq_len ({data.seq_len})")
    if segments.length and data.document_starts:
        _fail(
            "segments.length",
            segments.length,
            "0 with data.document_starts (a document start resets to the "
            "window's initial state, which a segment does not hold)",
        )
    if config.train.steps % optim.accum_steps:
        _fail("train.steps", config.train.steps, f"a multiple of optim.accum_steps ({optim.accum_steps})")
    _check_lm_eval(config)
    _check_mesh(config, device_count)
    model_cfg = _check_model(config.model)
    _check_chunk_size(config.model.family, model_cfg)
    _check_context(config, model_cfg)
    from rwkv_jax.finetune.training import check_finetune  # here: it imports the model families

    check_finetune(config)


# Field -> (kind, lower bound, upper bound, whether the lower bound is excluded); None: no bound.
_RANGES: dict[str, tuple[type, float | None, float | None, bool]] = {
    "seed": (int, 0, None, False),
    "data.seq_len": (int, 1, None, False),
    "data.batch_size": (int, 1, None, False),
    "data.document_starts": (bool, None, None, False),
    "optim.lr": (float, 0, None, True),
    "optim.final_lr_ratio": (float, 0, 1, False),
    "optim.warmup_steps": (int, 0, None, False),
    "optim.b1": (float, 0, 1, False),
    "optim.b2": (float, 0, 1, False),
    "optim.eps": (float, 0, None, True),
    "optim.weight_decay": (float, 0, None, False),
    "optim.clip_norm": (float, 0, None, False),
    "optim.accum_steps": (int, 1, None, False),
    "loss.l2wrap": (float, 0, None, False),
    "segments.length": (int, 0, None, False),
    "segments.truncate": (bool, None, None, False),
    "finetune.token_shift": (bool, None, None, False),
    "finetune.lora_rank": (int, 1, None, False),
    "finetune.lora_alpha": (float, 0, None, True),
    "train.steps": (int, 1, None, False),
    "train.max_seconds": (float, 0, None, False),
    "train.log_every": (int, 1, None, False),
    "train.progress": (bool, None, None, False),
    "train.remat_blocks": (bool, None, None, False),
    "ckpt.every": (int, 0, None, False),
    "ckpt.keep": (int, 1, None, False),
    "eval.every": (int, 0, None, False),
    "eval.batches": (int, 1, None, False),
    "eval.sample_tokens": (int, 0, None, False),
    "eval.temperature": (float, 0, None, False),
    "eval.lm_eval_limit": (int, 0, None, False),
    "sharding_max_replicated": (float, 0, 1, False),
    "distributed.num_processes": (int, 1, None, False),
    "distributed.process_id": (int, 0, None, False),
    "distributed.local_device_count": (int, 0, None, False),
    "distributed.heartbeat_timeout_seconds": (int, 1, None, False),
    "distributed.initialization_timeout": (int, 1, None, False),
}
_SCHEDULES = ("cosine", "linear", "constant")
_MESH_AXES = ("data", "fsdp", "tensor", "context")


def _fail(field: str, value: Any, valid: str) -> None:
    raise ConfigError(f"config.{field} = {value!r} is invalid; expected {valid}")


def _get(config: ConfigDict, dotted: str) -> Any:
    for name in dotted.split("."):
        config = config[name]
    return config


def _check_fields(
    config: ConfigDict, ranges: dict[str, tuple[type, float | None, float | None, bool]]
) -> None:
    for field, (kind, low, high, open_low) in ranges.items():
        value = _get(config, field)
        if kind is bool:
            if not isinstance(value, bool):
                _fail(field, value, "True or False")
            continue
        kinds = (int,) if kind is int else (int, float)
        name = "an integer" if kind is int else "a number"
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            _fail(field, value, f"{name}{_bounds(low, high, open_low)}")
        if (low is not None and (value <= low if open_low else value < low)) or (
            high is not None and value > high
        ):
            _fail(field, value, f"{name}{_bounds(low, high, open_low)}")
    if config.distributed.process_id >= config.distributed.num_processes:
        _fail("distributed.process_id", config.distributed.process_id, "< distributed.num_processes")


def lm_eval_task_list(config: ConfigDict) -> list[str]:
    """The task names of ``config.eval.lm_eval_tasks``."""
    return [task.strip() for task in config.eval.lm_eval_tasks.split(",") if task.strip()]


def _check_lm_eval(config: ConfigDict) -> None:
    evaluation = config.eval
    for field in ("lm_eval_tasks", "lm_eval_include_path"):
        if not isinstance(evaluation[field], str):
            _fail(f"eval.{field}", evaluation[field], "a string")
    if not lm_eval_task_list(config):
        return
    if evaluation.lm_eval_include_path and not os.path.isdir(evaluation.lm_eval_include_path):
        _fail(
            "eval.lm_eval_include_path", evaluation.lm_eval_include_path, "an existing folder of task files"
        )
    if config.distributed.num_processes > 1:
        _fail(
            "eval.lm_eval_tasks", evaluation.lm_eval_tasks, "'' in a multi-process run (lm-eval runs in one)"
        )
    if importlib.util.find_spec("lm_eval") is None:
        _fail(
            "eval.lm_eval_tasks",
            evaluation.lm_eval_tasks,
            "'' unless lm-eval is installed (pip install .[eval])",
        )


def _bounds(low: float | None, high: float | None, open_low: bool) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" {'>' if open_low else '>='} {low}"
    return ""


def _check_mesh(config: ConfigDict, device_count: int | None) -> None:
    sizes = {axis: config.mesh[axis] for axis in _MESH_AXES}
    for axis, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size == 0 or size < -1:
            _fail(f"mesh.{axis}", size, "a positive integer or -1 (every device the other axes leave)")
    product = " * ".join(f"mesh.{axis}" for axis in _MESH_AXES)
    if list(sizes.values()).count(-1) > 1:
        both = " and ".join(f"mesh.{axis}" for axis, size in sizes.items() if size == -1)
        _fail(both, -1, "at most one axis of size -1")
    rules = dict(config.sharding_rules)
    for logical, target in rules.items():
        named = (target,) if isinstance(target, str) else tuple(target or ())
        if any(axis not in _MESH_AXES for axis in named):
            _fail("sharding_rules", f"{logical} -> {target}", f"mesh axes among {_MESH_AXES} or None")
    if device_count is None:
        return
    known = math.prod(size for size in sizes.values() if size != -1)
    if -1 in sizes.values():
        if device_count % known:
            _fail(
                product,
                sizes,
                f"a product of the sizes not -1 ({known}) that divides the {device_count} devices",
            )
        sizes = {axis: device_count // known if size == -1 else size for axis, size in sizes.items()}
    elif known != device_count:
        _fail(product, sizes, f"a product ({known}) equal to the number of devices, {device_count}")
    batch_axes = rules.get("batch")
    batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
    shards = math.prod(sizes[axis] for axis in batch_axes)
    if config.data.batch_size % shards:
        _fail(
            "data.batch_size",
            config.data.batch_size,
            f"a multiple of {shards}, the mesh axes {batch_axes} that shard the batch ({sizes})",
        )


def _check_context(config: ConfigDict, model_cfg: Any) -> None:
    """``mesh.context > 1`` splits each window (or segment) over devices: the family's WKV must have a
    context-parallel form, each device's share must be whole chunks; packed-document masks are not split."""
    context = config.mesh.context
    if context == 1:
        return
    table = get_family(config.model.family).wkv
    if table is None or table.context is None:
        _fail("mesh.context", context, f"1 for {config.model.family} (context parallelism: Finch, Goose)")
    if config.data.document_starts:
        _fail("mesh.context", context, "1 with data.document_starts (start masks are not split over devices)")
    length = config.segments.length or config.data.seq_len
    share = context * (getattr(model_cfg, "chunk_size", None) or 1)
    if length % share:
        _fail(
            "mesh.context",
            context,
            f"a size whose product with the chunk size ({share}) divides the window ({length} tokens)",
        )


def _check_model(model: ConfigDict) -> Any:
    """The family's config object (its class validates its own fields), errors prefixed with the section."""
    fields = dict(model.items())
    try:
        return get_family(fields.pop("family")).make_config(**fields)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.model: {e}") from None


def _check_chunk_size(family_name: str, model_cfg: Any) -> None:
    """Asks the family's WKV forms table whether the forms ``wkv_impl`` may use take ``chunk_size``.

    Each form that AUTO could pick (on any backend) or the named form is traced abstractly on one chunk
    (``jax.eval_shape``: no device, no compilation), which runs the form's own chunk-size rules; then the
    table's value check runs on the strongest decay the family's model can produce, when its model module
    declares it (``MAX_LOG_DECAY_RATE``: ``w_log >= -MAX_LOG_DECAY_RATE``).
    """
    from rwkv_jax.wkv.impl import Impl  # here: the wkv package imports nothing of training

    table = get_family(family_name).wkv
    chunk_size = getattr(model_cfg, "chunk_size", None)
    impl = getattr(model_cfg, "wkv_impl", None)
    if table is None or chunk_size is None or impl is None:
        return
    impl = Impl.parse(impl)
    candidates = {table.auto_cpu, table.auto_accelerated} if impl is Impl.AUTO else {impl}
    candidates = [c for c in candidates if c in table.forms and c not in (Impl.RECURRENT, Impl.SCAN)]
    rate = getattr(
        sys.modules.get(get_family(family_name).model_class.__module__), "MAX_LOG_DECAY_RATE", None
    )
    for form in candidates:
        inputs = _probe_inputs(table, model_cfg, chunk_size)
        try:
            jax.eval_shape(lambda *args, form=form: table(*args, impl=form, chunk_size=chunk_size), *inputs)
        except ValueError as e:
            _fail(
                "model.chunk_size", chunk_size, f"a chunk size the {table.name} {form.value} form takes: {e}"
            )
        if table.check_values is None or rate is None:
            continue
        concrete = {
            name: np.full(x.shape, -rate if name == "w_log" else 0.0, np.float32)
            for (name, _), x in zip(table.inputs, inputs, strict=True)
        }

        def passes(size: int, form: Impl = form, concrete: dict = concrete) -> bool:
            try:
                table.check_values(concrete, form, size)
            except ValueError:
                return False
            return True

        if not passes(chunk_size):
            largest = max((size for size in range(1, chunk_size) if passes(size)), default=None)
            title = get_family(family_name).title
            _fail(
                "model.chunk_size",
                chunk_size,
                f"at most {largest} for the {table.name} {form.value} form: {title}'s decays reach "
                f"w_log = -{rate:.4g} per step, and the form bounds the decay a chunk accumulates",
            )


def _probe_inputs(table: Any, model_cfg: Any, chunk_size: int) -> list[jax.ShapeDtypeStruct]:
    """Abstract inputs of one chunk for ``table``: B = H = 1, N the config's head size, C = N."""
    n = getattr(model_cfg, "head_size", 8)
    sizes = {"B": 1, "T": chunk_size, "H": 1, "N": n, "C": n}
    dtype = getattr(model_cfg, "dtype", np.float32)
    return [
        jax.ShapeDtypeStruct(tuple(sizes[letter] for letter in letters), dtype) for _, letters in table.inputs
    ]


def apply_override(config: ConfigDict, dotted_key: str, value: str) -> None:
    """Sets ``config.<dotted_key>`` from the string ``value``, converted to the field's current type.

    ``model.family`` switches the model section to another family (:func:`switch_family`); a key under
    ``model.`` that the family lacks is an error naming that family's nearest fields.
    """
    if dotted_key == "model.family":
        config.model = switch_family(config.model, value)
        return
    valid = flat_keys(config)
    if dotted_key not in valid:
        *_, leaf = dotted_key.split(".")
        if dotted_key.startswith("model.") and dotted_key.count(".") == 1:
            get_family(config.model.family).check_fields({leaf: None}, what="--config.model")
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
