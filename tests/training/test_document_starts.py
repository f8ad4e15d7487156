"""``data.document_starts``: the data pipeline marks where packed documents start, and the train and eval
steps then score each document of a window as if it were alone."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rwkv_jax.numerics import relative_error
from rwkv_jax.training.config import ConfigError, check_values, default_config
from rwkv_jax.training.data import END_OF_DOCUMENT, document_starts, pack_documents
from rwkv_jax.training.model import ModelFns, build_model
from rwkv_jax.training.step import make_eval_step, make_train_step
from tests.models.contract import randomize
from tests.training.conftest import tiny_model_section

DOCUMENTS, DOCUMENT_LENGTH = 3, 5  # tokens per document, its end-of-document token included


def test_document_starts_marks_the_token_after_each_end_of_document():
    stream = pack_documents([np.array([5, 6]), np.array([7]), np.array([8, 9, 10])])  # 5 6 0 7 0 8 9 10 0
    starts = document_starts(jnp.asarray(stream[None, :-1]))
    assert starts.tolist() == [[False, False, False, True, False, True, False, False]]


def test_packed_windows_score_each_document_as_if_alone():
    section = tiny_model_section("rwkv7")
    section.wkv_impl = "recurrent"  # a form that takes the mask (the explicit chunked form refuses it)
    # The official init zeroes the output projections (no context would reach the logits): perturb.
    fns, params = ModelFns.split(randomize(build_model(section, seed=0)))
    rng = np.random.default_rng(0)
    documents = [rng.integers(1, 256, DOCUMENT_LENGTH - 1) for _ in range(DOCUMENTS)]
    stream = np.concatenate([pack_documents(documents), [END_OF_DOCUMENT]])
    window = jnp.asarray(stream[None, : DOCUMENTS * DOCUMENT_LENGTH + 1], jnp.int32)
    # Alone: each document (and the next one's first token as its end token's target) as its own row.
    alone = jnp.stack(
        [window[0, i * DOCUMENT_LENGTH : (i + 1) * DOCUMENT_LENGTH + 1] for i in range(DOCUMENTS)]
    )
    eval_step = jax.jit(make_eval_step(fns))
    packed_eval_step = jax.jit(make_eval_step(fns, document_starts=True))
    nll_alone = eval_step(params, alone).reshape(1, -1)
    nll_packed = packed_eval_step(params, window)
    # Measured (float32, XLA:CPU): 0 (train step's loss: 8e-8); without the mask the later documents' nll
    # differ: 2.9e-2.
    assert relative_error(nll_packed, nll_alone) < 1e-7
    assert relative_error(eval_step(params, window), nll_alone) > 1e-4
    train_step = jax.jit(make_train_step(fns, optax.sgd(0.0), document_starts=True))
    _, _, metrics = train_step(params, optax.sgd(0.0).init(params), window)
    assert relative_error(metrics["loss"], jnp.mean(nll_alone)) < 8e-7


def test_document_starts_is_off_by_default_and_refused_with_segments():
    config = default_config()
    assert config.data.document_starts is False
    config.data.document_starts, config.segments.length = True, 4
    with pytest.raises(ConfigError, match=r"segments\.length.*data\.document_starts"):
        check_values(config)
    fns, _ = ModelFns.split(build_model(tiny_model_section("rwkv4"), seed=0))
    with pytest.raises(ValueError, match="document_starts needs whole windows"):
        make_train_step(fns, optax.sgd(0.0), segment_len=4, document_starts=True)
