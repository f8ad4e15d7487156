"""Lowering of a Pallas kernel for real hardware without the hardware: ``jax.export`` from abstract shapes."""

from collections.abc import Callable

import jax

TRITON_CALL = "__gpu$xla.gpu.triton"
KERNEL_CALLS = {"tpu": "tpu_custom_call", "cuda": TRITON_CALL}


def assert_lowers_forward_and_backward(
    kernel: Callable, args: tuple, platform: str, starts: jax.ShapeDtypeStruct | None = None
) -> None:
    """``kernel(*args, target=...)`` and its VJP lower for ``platform`` ('tpu': Mosaic, 'cuda': Triton) to one
    kernel call and two (forward and backward). Nothing runs; ``args`` may be ``jax.ShapeDtypeStruct``s.
    ``starts``: also pass ``starts=`` (a document-start mask, not differentiated)."""
    target = "tpu" if platform == "tpu" else "gpu"
    count = len(args)

    def forward(*args_and_starts):
        mask = {} if starts is None else {"starts": args_and_starts[count]}
        return kernel(*args_and_starts[:count], target=target, **mask)

    def forward_and_backward(*args_and_starts):
        outputs, pullback = jax.vjp(
            lambda *a: forward(*a, *args_and_starts[count:]), *args_and_starts[:count]
        )
        return pullback(outputs)

    checks = [] if platform == "tpu" else [jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)]
    abstract = args if starts is None else (*args, starts)
    for function, kernels in ((forward, 1), (forward_and_backward, 2)):
        exported = jax.export.export(jax.jit(function), platforms=[platform], disabled_checks=checks)(
            *abstract
        )
        assert exported.mlir_module().count(KERNEL_CALLS[platform]) == kernels, function
