"""The tiny-rwkv fixtures' check: the prompt ``"in`` (bytes 34 105 110) from the zero state must give the
reference logits after its third byte, fed one byte at a time and as one sequence (fixture README)."""

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

PROMPT = (34, 105, 110)
TOLERANCE = 1e-4  # max abs difference of the 256 logits


def assert_prompt_gives(model: Callable, expected: np.ndarray) -> np.ndarray:
    """Checks both ways of feeding the prompt against ``expected`` (and its argmax); returns the serial
    logits."""
    state = None
    for byte in PROMPT:
        logits, state = model(jnp.array([[byte]], jnp.int32), state)
    serial = np.asarray(logits[0, -1])
    sequence = np.asarray(model(jnp.array([PROMPT], jnp.int32))[0][0, -1])
    for got in (serial, sequence):
        assert not np.isnan(got).any()
        assert np.abs(got - expected).max() <= TOLERANCE
        assert got.argmax() == expected.argmax()
    return serial
