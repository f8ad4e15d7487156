"""Building blocks shared by every RWKV version: parameters with logical axes, token shift, LayerNorm, Linear,
the config checks, the "plain" initialisation of the ablations and the published-architecture check.

Parameters carry *logical* axis names (``vocab``, ``embed``, ``mlp``, ``heads``, ``head_dim``, ``lora``, ...)
as the ``logical_axes`` metadata of ``nnx.Param``; only a sharding config maps them to mesh axes. Storage:
with ``param_dtype=None`` (the default) the matrices (embedding, head, linear layers, the LoRAs of the mixes
and decays) are stored in the compute ``dtype`` and every other parameter (norms, token-shift weights, decays,
bonuses) in float32 (:func:`weight_dtype`, :func:`vector_dtype`); a ``param_dtype`` stores every parameter in
it (training keeps float32 master parameters with bfloat16 compute this way). Parameters are cast to
``dtype`` where used; :func:`matmul` multiplies by a stored matrix.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwkv_jax import lowp_matmul
from rwkv_jax.array_typing import Array, PRNGKey, Tokens
from rwkv_jax.models.projection import project
from rwkv_jax.wkv.context import context_size, shift_over_context

FLOAT_DTYPES = tuple(np.dtype(d) for d in (jnp.float32, jnp.bfloat16, jnp.float16))  # compute and storage

# The `init` switch of every family: BlinkDL's formulas, or the plain scheme below (an ablation baseline).
INITS = ("official", "plain")
# The plain scheme: every matrix (embedding, projections, LoRAs, head) ~ N(0, PLAIN_STD^2) as GPT-2 / most
# transformer codebases; every token-shift weight PLAIN_MIX (half this token, half the previous one); one
# decay for every channel of every layer (PLAIN_DECAY per token, i.e. w_log = log 0.9, a ~7-token memory,
# inside every family's range, Goose's included: its decay is at least exp(-exp(-0.5)) = 0.545); the bonus
# of the current token 1 (it counts as much as one fresh state entry); norm weights 1, biases 0.
PLAIN_STD = 0.02
PLAIN_MIX = 0.5
PLAIN_DECAY = 0.9
PLAIN_BONUS = 1.0


def require_positive_ints(config: object, *names: str) -> None:
    """Raises ValueError naming ``Config.name`` for the first attribute that is not a positive integer."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {value!r}")


def require_positive_floats(config: object, *names: str) -> None:
    """Raises ValueError naming ``Config.name`` for the first attribute that is not > 0 (epsilons)."""
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ValueError(f"{type(config).__name__}.{name} must be > 0, got {value!r}")


def require_bools(config: object, *names: str) -> None:
    """Raises ValueError naming ``Config.name`` for the first attribute that is not True or False."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, bool | np.bool_):
            raise ValueError(f"{type(config).__name__}.{name} must be True or False, got {value!r}")


def require_choice(config: object, name: str, choices: Sequence[Any]) -> None:
    """Raises ValueError naming ``Config.name`` and the valid values unless the attribute is one of them."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{type(config).__name__}.{name} must be one of {tuple(choices)}, got {value!r}")


def resolve_float_dtypes(config: object, *names: str, optional: tuple[str, ...] = ("param_dtype",)) -> None:
    """Sets each attribute of a frozen dataclass to its numpy dtype; raises unless float32, bfloat16 or
    float16 (None is kept for the ``optional`` names: see :func:`weight_dtype`)."""
    for name in names:
        value = getattr(config, name)
        if value is None and name in optional:
            continue
        try:
            dtype = np.dtype(value)
        except TypeError:
            dtype = None
        if dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{type(config).__name__}.{name} must be float32, bfloat16 or float16, got {value!r}"
            )
        object.__setattr__(config, name, dtype)


def weight_dtype(config: Any) -> np.dtype:
    """Storage dtype of the matrices (embedding, head, linear layers, LoRAs): ``param_dtype``, or the compute
    ``dtype`` when it is None (a bfloat16 model then holds half the bytes of a float32 one; BlinkDL's ``rwkv``
    package stores its LoRAs in the activation dtype too)."""
    return np.dtype(config.dtype if config.param_dtype is None else config.param_dtype)


def vector_dtype(config: Any) -> np.dtype:
    """Storage dtype of every other parameter (norms, token-shift weights, decays, bonuses): ``param_dtype``,
    or float32 when it is None (the numerics of the decay and norms need it)."""
    return np.dtype(jnp.float32 if config.param_dtype is None else config.param_dtype)


def param(value: Array, axes: Sequence[str | None]) -> nnx.Param:
    """An ``nnx.Param`` holding ``value`` with one logical axis name per dimension."""
    axes = tuple(axes)
    if len(axes) != value.ndim:
        raise ValueError(f"parameter of shape {value.shape} needs {value.ndim} axis names, got {axes}")
    return nnx.Param(value, logical_axes=axes)


def official_or_constant(config: Any, official: np.ndarray, constant: float) -> np.ndarray:
    """A vector's initial value: ``official`` (a formula's result) or, under ``config.init == "plain"``, the
    ``constant`` of the plain scheme in its shape (float64; the caller casts to ``param_dtype``)."""
    if config.init == "plain":
        return np.full(np.shape(official), constant, np.float64)
    return official


def official_or_normal(
    rngs: nnx.Rngs, config: Any, shape: tuple[int, ...], official: Callable[[], Array]
) -> Array:
    """A matrix's initial value: ``official()`` or, under ``config.init == "plain"``, ``N(0, PLAIN_STD^2)`` of
    ``shape`` in :func:`weight_dtype`. ``official`` is called only for the official scheme, so the random
    draws of the official initialisation (and its checkpoint-matching order) stay as they are."""
    if config.init == "plain":
        return plain_normal(rngs.params(), shape, weight_dtype(config))
    return official()


def plain_normal(key: PRNGKey, shape: tuple[int, ...], dtype: jnp.dtype) -> Array:
    """``N(0, PLAIN_STD^2)`` of ``shape``, drawn in float32."""
    return (PLAIN_STD * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def plain_log_rate() -> float:
    """``log(-w_log)`` of :data:`PLAIN_DECAY`: the raw ``time_decay`` of RWKV-4/5/6 (``w_log =
    -exp(time_decay)``) whose decay per token is PLAIN_DECAY (-2.25)."""
    return math.log(-math.log(PLAIN_DECAY))


class PublishedArchitecture:
    """Mixin of a config dataclass with architectural switches (the ablations).

    The config defines :meth:`published_switches`: ``{field: (value, published value)}`` for every switch,
    values resolved (e.g. Finch's ``decay=None`` is ``"data_dependent"``). An official checkpoint holds the
    published architecture only; the initialisation scheme is not a switch of the architecture.
    """

    def published_switches(self) -> dict[str, tuple[Any, Any]]:
        raise NotImplementedError(f"{type(self).__name__} must define published_switches")

    def unpublished_switches(self) -> list[str]:
        """``"field=value (published: value)"`` for every switch away from the published architecture."""
        switches = self.published_switches().items()
        return [
            f"{name}={value!r} (published: {want!r})" for name, (value, want) in switches if value != want
        ]

    @property
    def is_published(self) -> bool:
        """True when every switch has its published value (an official checkpoint can hold the model)."""
        return not self.unpublished_switches()


def require_published(config: PublishedArchitecture, layout: str) -> None:
    """Raises ValueError, before anything is written, when ``config`` is not the published architecture."""
    changed = config.unpublished_switches()
    if changed:
        raise ValueError(
            f"an official {layout} checkpoint holds the published architecture only; this "
            f"{type(config).__name__} has {', '.join(changed)}. Keep such a model in the training "
            "checkpoints (orbax) instead of an official .pth"
        )


def token_shift(x: Array, prev: Array, starts: Array | None = None) -> tuple[Array, Array]:
    """Shifts ``x [B, T, C]`` one step back in time, filling position 0 with ``prev [B, C]``.

    ``starts [B, T]`` bool (or None): a token that starts a packed document sees ``prev`` (the call's
    initial shift state) as its previous token, not the last token of the document before it.
    Under a mesh with a ``context`` axis the time axis is split over it (:mod:`rwkv_jax.wkv.context`).
    Returns the shifted sequence ``[B, T, C]`` and the last input ``x[:, -1] [B, C]`` (the next call's prev).
    """
    first = prev[:, None, :].astype(x.dtype)
    devices = context_size()
    if starts is None and devices > 1 and x.shape[1] % devices == 0:  # time split over devices
        return shift_over_context(x, first), x[:, -1]
    shifted = jnp.concatenate([first, x[:, :-1]], axis=1)
    if starts is not None:
        shifted = jnp.where(starts[..., None], first, shifted)
    return shifted, x[:, -1]


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, ``weight``/``bias`` of shape ``[C]``, statistics in float32."""

    def __init__(self, features: int, *, eps: float = 1e-5, param_dtype: jnp.dtype = jnp.float32):
        self.eps = eps
        self.weight = param(jnp.ones((features,), param_dtype), ("embed",))
        self.bias = param(jnp.zeros((features,), param_dtype), ("embed",))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class HeadGroupNorm(nnx.Module):
    """``ln_x``: GroupNorm with one group per head over ``[..., H * N]``; statistics in float32.

    BlinkDL's Eagle training code divides the input by ``head_size_divisor = 8`` before a GroupNorm with eps
    1e-5; that is the same as eps ``64e-5`` on the undivided input, which is what Finch and the ``rwkv``
    package use (the default here).
    """

    def __init__(self, num_heads: int, weight: Array, *, eps: float, param_dtype: jnp.dtype = jnp.float32):
        self.num_heads = num_heads
        self.eps = eps
        self.weight = param(jnp.asarray(weight, param_dtype), ("heads",))
        self.bias = param(jnp.zeros(jnp.shape(weight), param_dtype), ("heads",))

    def __call__(self, y: Array) -> Array:
        """``y [B, T, H, N]`` -> ``[B, T, H * N]`` float32."""
        y = y.astype(jnp.float32)
        mean = y.mean(-1, keepdims=True)
        var = jnp.square(y - mean).mean(-1, keepdims=True)
        y = ((y - mean) * jax.lax.rsqrt(var + self.eps)).reshape(*y.shape[:-2], -1)
        return y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)


class Linear(nnx.Module):
    """Bias-free ``y = x @ kernel``, ``kernel [in, out]`` (the transpose of torch's ``weight [out, in]``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        axes: tuple[str, str],
        *,
        kernel: Array | None = None,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        if kernel is None:
            kernel = jnp.zeros((in_features, out_features), param_dtype)
        if kernel.shape != (in_features, out_features):
            raise ValueError(f"kernel shape {kernel.shape} != ({in_features}, {out_features})")
        self.dtype = dtype
        self.kernel = param(kernel.astype(param_dtype), axes)

    def __call__(self, x: Array) -> Array:
        return matmul(x, self.kernel[...], self.dtype)


def matmul(x: Array, matrix: Array, dtype: jnp.dtype) -> Array:
    """``x [..., I] @ matrix [I, O] -> [..., O]`` in the compute ``dtype``, ``matrix`` as stored (a linear
    layer's kernel or a LoRA matrix). Float32 compute on a 16-bit matrix on CPU (the jitted step there)
    reads it at 2 bytes a weight through :mod:`rwkv_jax.lowp_matmul`; elsewhere the matrix is cast to
    ``dtype`` (:func:`rwkv_jax.models.projection.project`)."""
    x = x.astype(dtype)
    if lowp_matmul.applies(x, matrix):
        return lowp_matmul.matmul(x, matrix)
    return project(x, matrix.astype(dtype))


def check_token_ids(tokens: Tokens | np.ndarray, vocab_size: int) -> None:
    """Raises ValueError for tokens that are not ``[B, T]`` integers in ``[0, vocab_size)``.

    Shape and dtype are checked always; the range only for concrete arrays (under ``jit`` the values are
    unknown: an out-of-range id there gives NaN logits, since the embedding lookup fills with NaN).
    """
    traced = isinstance(tokens, jax.core.Tracer)
    ids = tokens if traced else np.asarray(tokens)
    if ids.ndim != 2 or ids.shape[1] < 1:
        raise ValueError(f"tokens must have shape [B, T] with T >= 1, got {ids.shape}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {ids.dtype}")
    if traced:
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"token id {int(ids[where])} at position {where} is outside the vocabulary [0, {vocab_size}); "
            f"{int(bad.sum())} id(s) out of range"
        )


class Embedding(nnx.Module):
    """Token embedding ``weight [V, C]``; an out-of-range id (possible only under jit) gives NaN rows."""

    def __init__(self, weight: Array):
        self.weight = param(weight, ("vocab", "embed"))

    def __call__(self, tokens: Tokens) -> Array:
        return jnp.take(self.weight[...], tokens, axis=0, mode="fill")


def module_at(root: nnx.Module, path: Sequence[str | int]) -> Any:
    """The node at ``path`` of ``root``'s graph (``("blocks", 0, "att")`` is ``root.blocks[0].att``)."""
    node = root
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


def _has_path(root: nnx.Module, path: Sequence[str | int]) -> bool:
    """Whether ``root``'s graph has a node at ``path`` (``path[:-1]`` must exist)."""
    parent, key = module_at(root, path[:-1]), path[-1]
    return key < len(parent) if isinstance(key, int) else hasattr(parent, key)


def replace_module(root: nnx.Module, path: Sequence[str | int], module: nnx.Module) -> None:
    """Puts ``module`` at ``path`` of ``root``'s graph, in place of what is there."""
    parent, key = module_at(root, path[:-1]), path[-1]
    if isinstance(key, int):
        parent[key] = module
    else:
        setattr(parent, key, module)


def with_config(model: nnx.Module, **changes: Any) -> nnx.Module:
    """The same parameters in a model built with ``dataclasses.replace(model.config, **changes)``.

    For settings that do not change parameter shapes: the WKV form (``wkv_impl``), its ``chunk_size``, the
    compute ``dtype``, norm epsilons. E.g. ``with_config(model, wkv_impl="pallas")`` to compare forms.
    A module put into the model after construction that defines ``rebuilt_on(module)`` (an adapter,
    :mod:`rwkv_jax.finetune.lora`) is rebuilt on the new model's module at its path, so it is kept.
    """
    config = dataclasses.replace(model.config, **changes)
    twin = nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0)))
    for path, node in nnx.iter_graph(model):
        # A module added after construction (an adapter) is not in the twin: rebuild it there.
        if isinstance(node, nnx.Module) and hasattr(node, "rebuilt_on"):
            base = module_at(twin, path) if _has_path(twin, path) else None  # None: new (a tuned state)
            replace_module(twin, path, node.rebuilt_on(base))
    ours, theirs = nnx.state(model, nnx.Param), nnx.state(twin, nnx.Param)
    shapes = jax.tree.map(lambda a: a.shape, ours), jax.tree.map(lambda a: a.shape, theirs)
    if shapes[0] != shapes[1]:
        raise ValueError(f"with_config would change parameter shapes ({sorted(changes)}); build a new model")
    nnx.update(twin, ours)
    return twin
