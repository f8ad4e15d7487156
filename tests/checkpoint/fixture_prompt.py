"""The tiny-rwkv fixtures' check: the prompt ``"in`` (bytes 34 105 110) from the zero state must give the
reference logits after its third byte, fed one byte at a time and as one sequence (fixture README), in every
WKV form the model's family offers."""

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from rwkv_jax.numerics import relative_error

PROMPT = (34, 105, 110)
# Relative error of the 256 logits, float32. Measured 2026-12 over the 4v0, 5v1, 5v2, 6v0 and 7v0 fixtures,
# both RWKV-5 references, every form (recurrent, scan, chunked, Pallas in interpret mode), serial and
# sequence: 1.6e-7 .. 4.4e-7 (max abs 6e-7 .. 9.5e-6; the fixture README's tolerance is 1e-4 max abs).
FLOAT32_BOUND = 4e-6


def assert_prompt_gives(model: Callable, expected: np.ndarray, bound: float = FLOAT32_BOUND) -> np.ndarray:
    """Checks both ways of feeding the prompt against ``expected`` (and its argmax); returns the serial
    logits."""
    state = None
    for byte in PROMPT:
        logits, state = model(jnp.array([[byte]], jnp.int32), state)
    serial = np.asarray(logits[0, -1])
    sequence = np.asarray(model(jnp.array([PROMPT], jnp.int32))[0][0, -1])
    for got in (serial, sequence):
        assert relative_error(got, expected) < bound  # NaN fails the comparison
        assert got.argmax() == expected.argmax()
    return serial
