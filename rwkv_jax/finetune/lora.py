"""LoRA and PiSSA adapters on the linear layers of any model family, merged back into official weights.

A targeted linear layer ``y = x @ kernel`` (``kernel [in, out]``) becomes
``y = x @ kernel + scale * (x @ lora_a) @ lora_b`` with ``lora_a [in, r]``, ``lora_b [r, out]`` float32
:class:`LoRAParam` variables and ``scale = alpha / r`` (Hu et al. 2021, arXiv 2106.09685). Training takes
the gradient with respect to ``nnx.state(model, LoRAParam)`` only; the base weights stay frozen, in whatever
dtype they were loaded (bfloat16 included)::

    model = add_adapters(load_official("base.pth"), LoRAConfig(("att.key", "ffn.value"), rank=8, alpha=16))
    trainable, frozen = nnx.state(model, LoRAParam, ...)   # optimiser state for the adapters only
    save_adapters(model, "adapters.safetensors")            # the adapters alone
    save_official(merge_adapters(model), "tuned.pth")       # a plain model the ``rwkv`` package runs

Targets are named as an RWKV user knows the layers, the official key without the block index:
``att.receptance``, ``att.key``, ``att.value``, ``att.output``, ``att.gate`` (Eagle/Finch), ``ffn.key``,
``ffn.value``, ``ffn.receptance`` (not in Goose), ``head``. :func:`adapter_targets` lists a model's; they
are found from the model itself (every :class:`~rwkv_jax.models.common.Linear`), so a new family needs no
table. RWKV-PEFT's LoRA covers the same ``att``/``ffn`` layers (``make_linear_att``, ``make_linear_ffn``).

Initialisation (``LoRAConfig.init``):

- ``"lora"``: ``lora_a ~ U(-1/sqrt(in), 1/sqrt(in))`` (torch's ``kaiming_uniform_(a=sqrt(5))`` of RWKV-PEFT's
  ``LoraLinear``), ``lora_b = 0``: the adapted model starts as the base model exactly.
- ``"pissa"`` (Meng et al. 2024, arXiv 2404.02948): from the SVD ``kernel = U S V^T``, ``lora_a = U_r
  sqrt(S_r / scale)`` and ``lora_b = sqrt(S_r / scale) V_r^T`` (the top r singular directions, as PEFT's
  ``pissa_init``), and the kernel keeps the residual ``kernel - scale * lora_a @ lora_b`` (stored in the
  kernel's dtype), so the initial model equals the base model up to that rounding. ``alpha = rank``
  (scale 1) is RWKV-PEFT's unscaled PiSSA.

Saved adapters (:func:`save_adapters`): a ``.safetensors`` file holding, per adapted layer, RWKV-PEFT's names
and torch layouts, ``blocks.N.att.key.lora_A [r, in]`` and ``lora_B [out, r]``, and the config and family
in the header's metadata. PiSSA changes the base weights; rather than the residual (as large as the model),
the file records PiSSA's initial adapters as ``init_lora_A`` / ``init_lora_B`` (RWKV-PEFT's ``init_lora``
file): :func:`load_adapters` recomputes the residual from the unmodified base, so the file applies to the
original official checkpoint.
"""

import dataclasses
import json
import math
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax.array_typing import Array
from rwkv_jax.checkpoint.safetensors_io import (
    read_safetensors,
    read_safetensors_metadata,
    write_safetensors,
)
from rwkv_jax.models.common import Linear, replace_module, require_choice, require_positive_ints
from rwkv_jax.models.family import family_of

INITS = ("lora", "pissa")
FORMAT = "rwkv_jax.adapters"  # the ``format`` entry of a saved file's metadata
Path = tuple[str | int, ...]  # a module's path in the model graph, e.g. ("blocks", 0, "att", "key")


class LoRAParam(nnx.Param):
    """A low-rank adapter matrix: a parameter, selected on its own as ``nnx.state(model, LoRAParam)``."""


class PiSSAInit(nnx.Variable):
    """A PiSSA adapter's initial value, kept to save the adapters (not a parameter: never trained)."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Which linear layers get adapters, and their rank, scale and initialisation.

    Attributes:
      targets: layer names (``"att.key"``, ``"ffn.value"``, ``"head"``, ...: see the module docstring); every
        block's layer of that name is adapted.
      rank: r, the adapters' inner width; at most ``min(in, out)`` of every targeted layer.
      alpha: the adapter output is scaled by ``alpha / rank``.
      init: ``"lora"`` (B = 0) or ``"pissa"`` (top-r SVD directions, base keeps the residual).
    """

    targets: tuple[str, ...]
    rank: int
    alpha: float
    init: str = "lora"

    def __post_init__(self):
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or not all(isinstance(t, str) for t in targets):
            raise ValueError(
                f"LoRAConfig.targets must be a non-empty tuple of layer names, got {self.targets!r}"
            )
        repeated = sorted({t for t in targets if targets.count(t) > 1})
        if repeated:
            raise ValueError(f"LoRAConfig.targets names {repeated} more than once")
        object.__setattr__(self, "targets", targets)
        require_positive_ints(self, "rank")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not self.alpha > 0:
            raise ValueError(f"LoRAConfig.alpha must be a number > 0, got {self.alpha!r}")
        require_choice(self, "init", INITS)

    @property
    def scale(self) -> float:
        """``alpha / rank``, the factor of the adapter's output."""
        return self.alpha / self.rank


class LoRALinear(Linear):
    """A :class:`Linear` with an adapter: ``x @ kernel + alpha / r * (x @ lora_a) @ lora_b``.

    Args:
      base: the layer adapted (its compute dtype, kernel dtype and logical axes are kept).
      kernel: ``[in, out]``, the base's kernel or (PiSSA) its residual.
      lora_a, lora_b: ``[in, r]``, ``[r, out]``; stored as float32 :class:`LoRAParam` (cast to the compute
        dtype where used, as the model's other parameters).
      alpha: the output scale times r.
      initial: PiSSA's initial ``(lora_a, lora_b)``, kept as :class:`PiSSAInit` (``init_lora_a``/``_b``).
    """

    def __init__(
        self,
        base: Linear,
        kernel: Array,
        lora_a: Array,
        lora_b: Array,
        *,
        alpha: float,
        initial: tuple[Array, Array] | None = None,
    ):
        in_features, out_features = base.kernel.shape
        axes = base.kernel.logical_axes
        super().__init__(
            in_features, out_features, axes, kernel=kernel, dtype=base.dtype, param_dtype=base.kernel.dtype
        )
        self.alpha = float(alpha)
        a_axes, b_axes = (axes[0], "lora"), ("lora", axes[1])
        self.lora_a = LoRAParam(jnp.asarray(lora_a, jnp.float32), logical_axes=a_axes)
        self.lora_b = LoRAParam(jnp.asarray(lora_b, jnp.float32), logical_axes=b_axes)
        if initial is not None:  # only PiSSA layers have these attributes
            self.init_lora_a = PiSSAInit(jnp.asarray(initial[0], jnp.float32), logical_axes=a_axes)
            self.init_lora_b = PiSSAInit(jnp.asarray(initial[1], jnp.float32), logical_axes=b_axes)

    @property
    def rank(self) -> int:
        return self.lora_a.shape[1]

    @property
    def scale(self) -> float:
        """``alpha / rank``, the factor of the adapter's output."""
        return self.alpha / self.rank

    @property
    def is_pissa(self) -> bool:
        return hasattr(self, "init_lora_a")

    def rebuilt_on(self, base: Linear) -> "LoRALinear":
        """This adapter (same values) on ``base``, a twin of its layer with other settings: the hook of
        :func:`rwkv_jax.models.common.with_config` (the jitted call of a bfloat16 model on CPU uses it)."""
        initial = (self.init_lora_a[...], self.init_lora_b[...]) if self.is_pissa else None
        a, b = self.lora_a[...], self.lora_b[...]
        return LoRALinear(base, self.kernel[...], a, b, alpha=self.alpha, initial=initial)

    def __call__(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        low_rank = (x @ self.lora_a[...].astype(self.dtype)) @ self.lora_b[...].astype(self.dtype)
        return super().__call__(x) + self.scale * low_rank


# ---------------------------------------------------------------------------------------------- the layers


def _target_name(path: Path) -> str:
    """The layer's name without container and block index (``("blocks", 3, "att", "key")``: ``att.key``)."""
    last_index = max((i for i, part in enumerate(path) if isinstance(part, int)), default=-1)
    return ".".join(str(part) for part in path[last_index + 1 :])


def _linears(model: nnx.Module) -> Iterator[tuple[Path, Linear]]:
    """``(path, layer)`` of every linear layer of ``model`` (adapted or not), in graph order."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, Linear):
            yield tuple(path), node


def adapter_targets(model: nnx.Module) -> tuple[str, ...]:
    """The target names ``model`` has (:class:`LoRAConfig.targets`), sorted."""
    return tuple(sorted({_target_name(path) for path, _ in _linears(model)}))


def _sites(model: nnx.Module, config: LoRAConfig) -> list[tuple[Path, Linear]]:
    """The layers ``config`` targets; raises ValueError for an unknown target, a rank above a layer's
    ``min(in, out)`` or a layer that has an adapter already, before anything changes."""
    valid = adapter_targets(model)
    unknown = [t for t in config.targets if t not in valid]
    if unknown:
        raise ValueError(
            f"{type(model).__name__} has no linear layer {', '.join(map(repr, unknown))} to adapt; "
            f"valid targets: {', '.join(valid)}"
        )
    sites = [(path, layer) for path, layer in _linears(model) if _target_name(path) in config.targets]
    for path, layer in sites:
        name = ".".join(map(str, path))
        if isinstance(layer, LoRALinear):
            raise ValueError(f"{name} has an adapter already; merge_adapters(model) first")
        if config.rank > min(layer.kernel.shape):
            raise ValueError(
                f"LoRAConfig.rank {config.rank} exceeds min(in, out) = {min(layer.kernel.shape)} of {name} "
                f"(kernel {layer.kernel.shape})"
            )
    return sites


def _plus_low_rank(kernel: Array, a: Array, b: Array, scale: float) -> Array:
    """``kernel + scale * a @ b`` in float32 (full-precision matmul on every backend), in the kernel's dtype.

    The one place a kernel and an adapter are combined: adding, merging and reloading give the same bits.
    """
    product = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
    return (kernel.astype(jnp.float32) + scale * product).astype(kernel.dtype)


# ---------------------------------------------------------------------------------------- add, merge, config


def _pissa_factors(kernel: Array, rank: int, scale: float) -> tuple[Array, Array]:
    """``(a [in, r], b [r, out])`` with ``scale * a @ b`` the best rank-r approximation of ``kernel``."""
    u, s, vt = jnp.linalg.svd(kernel.astype(jnp.float32), full_matrices=False)
    root = jnp.sqrt(s[:rank] / scale)
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def _lora_factors(key: jax.Array, kernel: Array, rank: int) -> tuple[Array, Array]:
    """``(a [in, r] ~ U(-1/sqrt(in), 1/sqrt(in)), b = 0 [r, out])``: the adapter adds nothing at first."""
    fan_in, fan_out = kernel.shape
    bound = 1.0 / math.sqrt(fan_in)
    a = jax.random.uniform(key, (fan_in, rank), jnp.float32, -bound, bound)
    return a, jnp.zeros((rank, fan_out), jnp.float32)


def add_adapters(model: nnx.Module, config: LoRAConfig, *, seed: int = 0) -> nnx.Module:
    """Adds an adapter to every layer ``config`` targets, in place; returns ``model``.

    ``seed`` draws the LoRA ``a`` matrices (one key per layer, folded from it). PiSSA also replaces each
    targeted kernel by its residual. Bad targets or rank: ValueError before anything changes.
    """
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a LoRAConfig, got {type(config).__name__}")
    sites = _sites(model, config)
    key = jax.random.key(seed)
    for index, (path, layer) in enumerate(sites):
        kernel = layer.kernel[...]
        if config.init == "pissa":
            a, b = _pissa_factors(kernel, config.rank, config.scale)
            residual = _plus_low_rank(kernel, a, b, -config.scale)
            adapted = LoRALinear(layer, residual, a, b, alpha=config.alpha, initial=(a, b))
        else:
            a, b = _lora_factors(jax.random.fold_in(key, index), kernel, config.rank)
            adapted = LoRALinear(layer, kernel, a, b, alpha=config.alpha)
        replace_module(model, path, adapted)
    return model


def _adapted(model: nnx.Module) -> list[tuple[Path, LoRALinear]]:
    """Every adapted layer of ``model``; ValueError when there is none."""
    adapted = [(path, layer) for path, layer in _linears(model) if isinstance(layer, LoRALinear)]
    if not adapted:
        raise ValueError(f"this {type(model).__name__} has no adapters (see add_adapters / load_adapters)")
    return adapted


def merge_adapters(model: nnx.Module) -> nnx.Module:
    """Folds every adapter into its kernel (``kernel + scale * a @ b`` in the kernel's dtype), in place;
    returns ``model``, now a plain model (``save_official`` writes it)."""
    for path, layer in _adapted(model):
        in_features, out_features = layer.kernel.shape
        kernel = _plus_low_rank(layer.kernel[...], layer.lora_a[...], layer.lora_b[...], layer.scale)
        plain = Linear(
            in_features,
            out_features,
            layer.kernel.logical_axes,
            kernel=kernel,
            dtype=layer.dtype,
            param_dtype=layer.kernel.dtype,
        )
        replace_module(model, path, plain)
    return model


def adapter_config(model: nnx.Module) -> LoRAConfig:
    """The :class:`LoRAConfig` of ``model``'s adapters (targets in graph order); ValueError when it has none
    or they differ in rank, alpha or initialisation (no single config made them)."""
    adapted = _adapted(model)
    kinds = {(layer.rank, layer.alpha, layer.is_pissa) for _, layer in adapted}
    if len(kinds) > 1:
        raise ValueError(f"the adapters differ in (rank, alpha, pissa): {sorted(kinds)}")
    rank, alpha, pissa = kinds.pop()
    targets = tuple(dict.fromkeys(_target_name(path) for path, _ in adapted))
    return LoRAConfig(targets, rank, alpha, "pissa" if pissa else "lora")


# ------------------------------------------------------------------------------------------- save and load


def _tensor_names(path: Path) -> dict[str, str]:
    """The file's names of one layer's tensors, RWKV-PEFT's (``blocks.0.att.key.lora_A``), by attribute."""
    prefix = ".".join(map(str, path))
    names = ("lora_a", "lora_b", "init_lora_a", "init_lora_b")
    return {name: f"{prefix}.{name[:-1]}{name[-1].upper()}" for name in names}


def save_adapters(model: nnx.Module, path: str | os.PathLike) -> None:
    """Writes ``model``'s adapters alone to the ``.safetensors`` file ``path`` (atomically), float32 in
    torch's layouts (``lora_A [r, in]``, ``lora_B [out, r]``), PiSSA's initial values too; the metadata holds
    the config and the family. See the module docstring."""
    config = adapter_config(model)
    tensors = {}
    for layer_path, layer in _adapted(model):
        names = _tensor_names(layer_path)
        for attribute in ("lora_a", "lora_b", "init_lora_a", "init_lora_b")[: 4 if layer.is_pissa else 2]:
            tensors[names[attribute]] = np.asarray(getattr(layer, attribute)[...]).T
    metadata = {
        "format": FORMAT,
        "family": family_of(model).name,
        "config": json.dumps(dataclasses.asdict(config)),
    }
    write_safetensors(path, tensors, metadata)


def _read_adapters(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str, LoRAConfig]:
    """``(tensors, family name, config)`` of a file written by :func:`save_adapters`."""
    metadata = read_safetensors_metadata(path)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not an adapter file (metadata format {metadata.get('format')!r})")
    return read_safetensors(path), metadata["family"], LoRAConfig(**json.loads(metadata["config"]))


def load_adapters(model: nnx.Module, path: str | os.PathLike) -> nnx.Module:
    """Adds the adapters saved at ``path`` to the base ``model`` (the unmodified official weights, also for
    PiSSA: its residual is recomputed from them), in place; returns ``model``.

    Raises ValueError, before anything changes, for a file of another family, targets the model lacks, or a
    tensor missing, unexpected or of the wrong shape.
    """
    tensors, family, config = _read_adapters(path)
    if family != family_of(model).name:
        raise ValueError(f"{path} holds adapters of a {family} model, not of {family_of(model).name}")
    sites = _sites(model, config)
    attributes = ("lora_a", "lora_b", "init_lora_a", "init_lora_b")[: 4 if config.init == "pissa" else 2]
    expected = {}
    for layer_path, layer in sites:
        fan_in, fan_out = layer.kernel.shape
        shapes = {"lora_a": (config.rank, fan_in), "lora_b": (fan_out, config.rank)}
        for attribute in attributes:
            expected[_tensor_names(layer_path)[attribute]] = shapes[attribute.removeprefix("init_")]
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing[:4]}, unexpected tensors {unexpected[:4]}")
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise ValueError(f"{path}: {name} has shape {tensors[name].shape}, the model needs {shape}")
    for layer_path, layer in sites:
        values = {a: jnp.asarray(tensors[_tensor_names(layer_path)[a]].T) for a in attributes}
        kernel, initial = layer.kernel[...], None
        if config.init == "pissa":
            initial = values["init_lora_a"], values["init_lora_b"]
            kernel = _plus_low_rank(kernel, *initial, -config.scale)
        adapted = LoRALinear(
            layer, kernel, values["lora_a"], values["lora_b"], alpha=config.alpha, initial=initial
        )
        replace_module(model, layer_path, adapted)
    return model
