"""generate and sample_logits: sampling distributions, greedy = manual argmax, ragged batch = one by one."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwkv_jax.generation import generate, sample_logits
from rwkv_jax.models.rwkv4.model import RWKV4, RWKV4Config
from rwkv_jax.numerics import relative_error
from tests.conftest import load_experiment

VOCAB = 40


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    vocab_size: int = VOCAB
    n_embd: int = 8


class FakeRNN(nnx.Module):
    """A tiny deterministic model with the rwkv_jax contract: state h [B, C], h <- 0.5 h + emb[token]."""

    def __init__(self, config: FakeConfig = FakeConfig(), seed: int = 0):
        rng = np.random.default_rng(seed)
        self.config = config
        self.emb = nnx.Param(jnp.asarray(rng.normal(size=(config.vocab_size, config.n_embd)), jnp.float32))
        self.head = nnx.Param(
            jnp.asarray(3 * rng.normal(size=(config.n_embd, config.vocab_size)), jnp.float32)
        )

    def init_state(self, batch_size: int) -> jax.Array:
        return jnp.zeros((batch_size, self.config.n_embd), jnp.float32)

    def __call__(self, tokens, state=None):
        tokens = jnp.asarray(tokens)
        state = self.init_state(tokens.shape[0]) if state is None else state

        def step(h, token):
            h = 0.5 * h + self.emb[...][token]
            return h, h @ self.head[...]

        state, logits = jax.lax.scan(step, state, tokens.T)
        return logits.transpose(1, 0, 2), state


def tiny_rwkv4() -> RWKV4:
    return RWKV4(RWKV4Config(vocab_size=VOCAB, n_layer=2, n_embd=16), rngs=nnx.Rngs(0))


@nnx.jit
def call(model, tokens, state):
    return model(tokens, state)


def manual_greedy(model, prompt: list[int], n: int) -> tuple[list[int], object]:
    """Greedy decoding by calling the model one token at a time (no generate machinery)."""
    logits, state = call(model, jnp.asarray([prompt], jnp.int32), model.init_state(1))
    out = []
    for _ in range(n):
        token = int(jnp.argmax(logits[0, -1]))
        out.append(token)
        logits, state = call(model, jnp.asarray([[token]], jnp.int32), state)
    return out, state


def assert_states_close(a, b, row: int | None = None):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x = np.asarray(x if row is None else x[row : row + 1])
        assert relative_error(x, y) < 1e-6  # measured 1.4e-7


# ----------------------------------------------------------------------------------------- sample_logits


def empirical(logits, n: int, **settings) -> np.ndarray:
    """Frequencies of n draws from one row of logits."""
    draws = sample_logits(
        jnp.broadcast_to(jnp.asarray(logits), (n, len(logits))), jax.random.key(1), **settings
    )
    return np.bincount(np.asarray(draws), minlength=len(logits)) / n


def assert_matches(freq: np.ndarray, probs: np.ndarray, n: int):
    """Every frequency within 5 standard errors of its probability; zero-probability ids never drawn."""
    assert (freq[probs == 0] == 0).all()
    se = np.sqrt(probs * (1 - probs) / n)
    np.testing.assert_array_less(np.abs(freq - probs), 5 * se + 1e-12)


PROBS = np.array([0.05, 0.5, 0.15, 0.3])


def test_plain_sampling_matches_the_softmax():
    n = 40000
    assert_matches(empirical(np.log(PROBS), n), PROBS, n)


def test_temperature_sharpens_the_distribution():
    n = 40000
    expected = PROBS**2 / (PROBS**2).sum()  # temperature 0.5 squares the probabilities
    assert_matches(empirical(np.log(PROBS), n, temperature=0.5), expected, n)


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [(0.5, [1]), (0.75, [1, 3]), (0.85, [1, 2, 3]), (1.0, [0, 1, 2, 3])],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    n = 40000
    expected = np.zeros_like(PROBS)
    expected[kept] = PROBS[kept] / PROBS[kept].sum()
    assert_matches(empirical(np.log(PROBS), n, top_p=top_p), expected, n)


def test_top_k_keeps_the_k_most_probable():
    n = 40000
    expected = np.array([0, 0.5, 0, 0.3]) / 0.8
    assert_matches(empirical(np.log(PROBS), n, top_k=2), expected, n)


def test_top_k_one_and_temperature_zero_are_argmax():
    logits = jax.random.normal(jax.random.key(0), (16, 300)) * 5
    argmax = np.asarray(jnp.argmax(logits, axis=-1))
    for seed in range(3):
        key = jax.random.key(seed)
        np.testing.assert_array_equal(sample_logits(logits, key, top_k=1), argmax)
        np.testing.assert_array_equal(sample_logits(logits, key, temperature=0), argmax)
        np.testing.assert_array_equal(sample_logits(logits, key, temperature=3.0, top_p=1e-6), argmax)


@pytest.mark.parametrize(
    "settings",
    [{"temperature": -1.0}, {"temperature": float("nan")}, {"top_k": -1}, {"top_k": 1.5}, {"top_p": 0.0}],
)
def test_bad_sampling_settings_are_rejected(settings):
    with pytest.raises(ValueError):
        sample_logits(jnp.zeros((1, 4)), jax.random.key(0), **settings)


# --------------------------------------------------------------------------------------------- generate


@pytest.mark.parametrize("make_model", [FakeRNN, tiny_rwkv4], ids=["fake", "rwkv4"])
def test_greedy_equals_a_manual_argmax_loop(make_model):
    model = make_model()
    prompt = [3, 1, 4, 1, 5]
    result = generate(model, [prompt], 12, greedy=True)
    expected, state = manual_greedy(model, prompt, 12)
    assert result.tokens == [expected]
    assert result.stopped == [False]
    assert_states_close(result.state, state)


@pytest.mark.parametrize("make_model", [FakeRNN, tiny_rwkv4], ids=["fake", "rwkv4"])
def test_ragged_batch_equals_each_prompt_alone(make_model):
    model = make_model()
    prompts = [[7], [2, 9, 4, 4, 0, 1], [5, 5, 5]]
    batch = generate(model, prompts, 8, temperature=0)
    for row, prompt in enumerate(prompts):
        alone = generate(model, [prompt], 8, temperature=0)
        assert batch.tokens[row] == alone.tokens[0]
        assert_states_close(batch.state, alone.state, row)
        assert relative_error(batch.next_logits[row], alone.next_logits[0]) < 1e-6  # measured 0.0


def test_stop_token_ends_the_row_and_is_not_fed():
    model = FakeRNN()
    prompts = [[1, 2, 3], [4]]
    free = generate(model, prompts, 10, greedy=True).tokens
    stop = free[0][4]
    first = free[0].index(stop)
    result = generate(model, prompts, 10, greedy=True, stop_tokens=[stop])
    assert result.tokens[0] == free[0][:first]
    assert result.stopped[0]
    if stop not in free[1]:
        assert result.tokens[1] == free[1] and not result.stopped[1]
    _, state = model(jnp.asarray([prompts[0] + free[0][:first]], jnp.int32))
    assert_states_close(result.state, state, row=0)


def test_callback_streams_each_step():
    model = FakeRNN()
    prompts = [[1], [2, 3, 4]]
    seen = [[], []]
    steps = []

    def callback(new_tokens, step):
        steps.append(step)
        for row, token in enumerate(new_tokens):
            if token >= 0:
                seen[row].append(int(token))

    result = generate(model, prompts, 5, temperature=1.0, seed=3, callback=callback)
    assert seen == result.tokens
    assert steps == list(range(len(steps))) and len(steps) == 5 + 2  # row 1 reads 2 more prompt ids first


def test_seed_makes_sampling_reproducible():
    model = FakeRNN()

    def run(seed):
        return generate(model, [[1, 2]], 20, temperature=2.0, top_k=30, top_p=0.95, seed=seed).tokens

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_given_state_continues_a_prompt():
    model = FakeRNN()
    whole = generate(model, [[1, 2, 3, 4]], 6, greedy=True)
    _, state = model(jnp.asarray([[1, 2]], jnp.int32))
    continued = generate(model, [[3, 4]], 6, greedy=True, state=state)
    assert continued.tokens == whole.tokens
    assert_states_close(continued.state, whole.state)


def test_zero_new_tokens_reads_the_prompts_only():
    model = FakeRNN()
    prompts = [[1, 2, 3], [4]]
    result = generate(model, prompts, 0)
    assert result.tokens == [[], []]
    for row, prompt in enumerate(prompts):
        _, state = model(jnp.asarray([prompt], jnp.int32))
        assert_states_close(result.state, state, row)


@pytest.mark.parametrize(
    ("prompts", "kwargs", "message"),
    [
        ([], {}, "non-empty list"),
        ("hello", {}, "non-empty list"),
        ([[1], []], {}, r"prompts\[1\]"),
        ([[1, VOCAB]], {}, "outside the vocabulary"),
        ([[1]], {"max_new_tokens": -1}, "max_new_tokens"),
        ([[1]], {"state": jnp.zeros((2, 8))}, "batch"),
        ([[1]], {"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_arguments_are_rejected(prompts, kwargs, message):
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(FakeRNN(), prompts, **kwargs)


# ------------------------------------------------------------------------------- experiments/generate.py


def test_generate_script_reproduces_the_fixture_greedy_continuation(tiny_rwkv_dir, capsys):
    script = load_experiment("generate")
    argv = [
        "--model",
        str(tiny_rwkv_dir / "tiny-rwkv-4v0-660K.pth"),
        "--tokenizer",
        "byte",
        "--prompt",
        '"in',
    ]
    text = script.main([*argv, "--max-new-tokens", "16", "--temperature", "0"])
    # The fixture README: greedy continuation of the prompt `"in` by 4v0 is `"ins the the the ...`.
    assert text.startswith('"ins the the the')
    assert capsys.readouterr().out == text + "\n"
    sampled = script.main(
        [*argv, "--max-new-tokens", "16", "--temperature", "1.5", "--top-p", "0.9", "--seed", "1"]
    )
    assert sampled.startswith('"in') and sampled != text


def test_generate_script_continues_the_goose_fixture_as_its_readme_says(tiny_rwkv_dir, capsys):
    model = str(tiny_rwkv_dir / "tiny-rwkv-7v0-834K.pth")
    argv = ["--model", model, "--tokenizer", "byte", "--prompt", '"in', "--max-new-tokens", "16"]
    text = load_experiment("generate").main([*argv, "--temperature", "0"])
    assert text.startswith('"in the the the')  # the fixture README's greedy continuation for 7v0
