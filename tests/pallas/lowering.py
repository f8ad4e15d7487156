"""Lowering of a Pallas kernel for real hardware without the hardware: ``jax.export`` from abstract shapes."""

import functools
from collections.abc import Callable

import jax

TRITON_CALL = "__gpu$xla.gpu.triton"
KERNEL_CALLS = {"tpu": "tpu_custom_call", "cuda": TRITON_CALL}


def assert_lowers_forward_and_backward(kernel: Callable, args: tuple, platform: str) -> None:
    """``kernel(*args, target=...)`` and its VJP lower for ``platform`` ('tpu': Mosaic, 'cuda': Triton) to one
    kernel call and two (forward and backward). Nothing runs; ``args`` may be ``jax.ShapeDtypeStruct``s."""
    forward = functools.partial(kernel, target="tpu" if platform == "tpu" else "gpu")

    def forward_and_backward(*args):
        outputs, pullback = jax.vjp(forward, *args)
        return pullback(outputs)

    checks = [] if platform == "tpu" else [jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)]
    for function, kernels in ((forward, 1), (forward_and_backward, 2)):
        exported = jax.export.export(jax.jit(function), platforms=[platform], disabled_checks=checks)(*args)
        assert exported.mlir_module().count(KERNEL_CALLS[platform]) == kernels, function
