"""The WKV implementation enum and its AUTO resolver.

Every WKV family (v4, v6 covering v5, later v7) offers the same forms with one signature per family; the
model picks a form by config (``wkv_impl``), never by editing code.
"""

import enum

import jax


class Impl(enum.Enum):
    """Ways to evaluate a WKV recurrence.

    RECURRENT: ``lax.scan`` over time, one step per token; the inference form and the ground truth.
    SCAN:      ``lax.associative_scan`` over a combine of per-step transforms; the parallel form.
    CHUNKED:   chunk-wise parallel form (intra-chunk masked matmuls, state carried between chunks).
    PALLAS:    a Pallas kernel (``pallas_kernels``); interpret mode on CPU.
    AUTO:      resolved by backend with :func:`resolve`.
    """

    RECURRENT = "recurrent"
    SCAN = "scan"
    CHUNKED = "chunked"
    PALLAS = "pallas"
    AUTO = "auto"

    @classmethod
    def parse(cls, value: "Impl | str") -> "Impl":
        """Accepts an ``Impl`` or its name in any case (``"chunked"``, ``"PALLAS"``)."""
        if isinstance(value, Impl):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            names = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"unknown WKV implementation {value!r}; expected one of {names}") from None


def resolve(impl: "Impl | str", *, available: tuple[Impl, ...], accelerated: Impl, cpu: Impl) -> Impl:
    """Turns ``impl`` into a concrete form that the calling family supports.

    Args:
      impl: the requested form (``AUTO`` allowed).
      available: the forms the family implements.
      accelerated: what AUTO means on GPU/TPU.
      cpu: what AUTO means on CPU.
    """
    impl = Impl.parse(impl)
    if impl is Impl.AUTO:
        impl = cpu if jax.default_backend() == "cpu" else accelerated
    if impl not in available:
        names = ", ".join(m.value for m in available)
        raise ValueError(f"WKV form {impl.value!r} is not implemented for this family; available: {names}")
    return impl
