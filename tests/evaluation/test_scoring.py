"""State-cached scoring without lm-eval: each shared context is read once and the scores equal scoring
every request from scratch; bad arguments are refused before any model call."""

import numpy as np
import pytest

from rwkv_jax.evaluation.scoring import RecurrentScorer, score_continuations
from rwkv_jax.numerics import relative_error
from rwkv_jax.presets import get_preset


@pytest.fixture(scope="module")
def model():
    return get_preset("goose-tiny").build(seed=5)


def test_shared_contexts_are_read_once_and_score_as_from_scratch(model):
    rng = np.random.default_rng(0)
    contexts = [rng.integers(0, 256, n).tolist() for n in (13, 5, 21)]
    pairs = [(c, rng.integers(0, 256, k).tolist()) for c in contexts for k in (1, 4, 9)]
    scorer = RecurrentScorer(model, batch_size=4, pieces=(8, 1))
    shared = score_continuations(scorer, pairs)
    read_shared = scorer.tokens_fed
    scratch = score_continuations(scorer, pairs, share_contexts=False)
    read_scratch = scorer.tokens_fed - read_shared
    continuations = sum(len(cont) for _, cont in pairs)
    assert read_shared == sum(len(c) - 1 for c in contexts) + continuations
    assert read_scratch == sum(len(c) - 1 for c, _ in pairs) + continuations
    # Each row's numbers do not depend on its batch neighbours: measured identical (0.0); 1e-7 is float32's
    # resolution.
    assert relative_error(np.array([s for s, _ in shared]), np.array([s for s, _ in scratch])) < 1e-7
    assert [g for _, g in shared] == [g for _, g in scratch]


def test_bad_pieces_batch_sizes_ids_and_empty_requests_are_refused(model):
    for pieces in [(8, 2), (1, 8, 1), ()]:
        with pytest.raises(ValueError, match="strictly descending sizes ending in 1"):
            RecurrentScorer(model, pieces=pieces)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        RecurrentScorer(model, batch_size=0)
    scorer = RecurrentScorer(model)
    with pytest.raises(ValueError, match=r"outside \[0, 256\).*300..300"):
        scorer.run([[1, 2], [300]])
    with pytest.raises(ValueError, match="continuation 1 is empty"):
        score_continuations(scorer, [([1], [2]), ([1], [])])
    assert scorer.calls == 0
