"""RWKV-4 against Hugging Face ``RwkvForCausalLM``: weights converted both ways, same logits and state."""

import jax
import numpy as np
from flax import nnx

from rwkv_jax.models.rwkv4.convert import from_hf_names, from_state_dict, to_hf_names, to_state_dict
from rwkv_jax.models.rwkv4.model import RWKV4, RWKV4Config
from rwkv_jax.numerics import relative_error
from tests.conftest import import_or_skip
from tests.models.contract import jitted
from tests.models.test_rwkv4 import randomize

torch = import_or_skip("torch", "needs torch (pip install -e .[test])")
transformers = import_or_skip("transformers", "needs transformers (pip install -e .[test])")

VOCAB, WIDTH, LAYERS, FFN = 64, 32, 2, 128


def hf_model(seed: int):
    """A small HF RWKV with every parameter random (time_decay, time_first and time_mix included)."""
    config = transformers.RwkvConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        attention_hidden_size=WIDTH,
        intermediate_size=FFN,
        context_length=64,
        rescale_every=0,  # HF halves the residual every N layers in eval mode; BlinkDL's fp32 math does not
    )
    model = transformers.RwkvForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "time_mix" in name:
                values = torch.rand(parameter.shape, generator=generator)
            elif "time_decay" in name:
                values = torch.rand(parameter.shape, generator=generator) * 6 - 4
            elif parameter.ndim == 1:
                values = 1 + 0.2 * torch.randn(parameter.shape, generator=generator)
            else:
                values = torch.randn(parameter.shape, generator=generator) / parameter.shape[-1] ** 0.5
            parameter.copy_(values)
    return model


def hf_state_dict(model) -> dict[str, np.ndarray]:
    return {name: tensor.detach().numpy().copy() for name, tensor in model.state_dict().items()}


def tokens(batch: int, steps: int) -> np.ndarray:
    return np.random.default_rng(3).integers(0, VOCAB, (batch, steps)).astype(np.int32)


def hf_logits(model, ids: np.ndarray, state=None):
    with torch.no_grad():
        out = model(torch.from_numpy(ids).long(), state=state, use_cache=True)
    return out.logits.numpy(), out.state


def assert_same_state(ours, hf_state) -> None:
    """HF's state: five ``[B, C, L]`` tensors, [ffn_x, att_x, num, den, max_exp]; ours: per layer."""
    for layer, layer_state in enumerate(ours):
        pairs = {
            "ffn_x": (layer_state.ffn_x, hf_state[0]),
            "att_x": (layer_state.att_x, hf_state[1]),
            "num": (layer_state.wkv.num, hf_state[2]),
            "den": (layer_state.wkv.den, hf_state[3]),
            "max_exp": (layer_state.wkv.max_exp, hf_state[4]),
        }
        for name, (a, b) in pairs.items():
            assert relative_error(a, b[:, :, layer].numpy()) < 3e-6, name  # measured 3.7e-7


def test_hf_weights_give_the_same_logits_on_a_sequence_and_token_by_token():
    reference = hf_model(seed=0)
    model = from_state_dict(from_hf_names(hf_state_dict(reference)))
    assert model.config.ffn_dim == FFN and model.config.n_layer == LAYERS
    ids = tokens(2, 12)
    expected, expected_state = hf_logits(reference, ids)
    forward = jitted(model)
    logits, state = forward(ids)
    assert np.abs(np.asarray(logits) - expected).max() <= 1e-5
    assert_same_state(state, expected_state)

    # HF mixes batch rows when it gets one token with a state and B > 1 (its one-token WKV output is [B, C],
    # broadcast against [B, 1, C]): step each row through HF separately.
    hf_states, state = [None] * len(ids), None
    for t in range(ids.shape[1]):
        logits, state = forward(ids[:, t : t + 1], state)
        for b in range(len(ids)):
            expected, hf_states[b] = hf_logits(reference, ids[b : b + 1, t : t + 1], hf_states[b])
            assert expected.shape == (1, 1, VOCAB)
            assert np.abs(np.asarray(logits[b : b + 1]) - expected).max() <= 1e-5, (b, t)
    for b, hf_state in enumerate(hf_states):
        assert_same_state(jax.tree.map(lambda leaf, b=b: leaf[b : b + 1], state), hf_state)


def test_our_weights_load_into_hf_strictly_and_give_the_same_logits():
    config = RWKV4Config(vocab_size=VOCAB, n_layer=LAYERS, n_embd=WIDTH, ffn_dim=FFN)
    model = randomize(RWKV4(config, rngs=nnx.Rngs(1)), seed=1)
    reference = hf_model(seed=0)
    hf_tensors = {name: torch.from_numpy(t) for name, t in to_hf_names(to_state_dict(model)).items()}
    reference.load_state_dict(hf_tensors, strict=True)
    ids = tokens(2, 10)
    expected, _ = hf_logits(reference, ids)
    logits, _ = jitted(model)(ids)
    assert np.abs(np.asarray(logits) - expected).max() <= 1e-5


def test_hf_names_round_trip():
    official = to_state_dict(RWKV4(RWKV4Config(VOCAB, LAYERS, WIDTH, FFN), rngs=nnx.Rngs(0)))
    hf_names = set(to_hf_names(official))
    assert hf_names == set(hf_state_dict(hf_model(seed=0)))
    back = from_hf_names(to_hf_names(official))
    assert list(back) == list(official)
    assert all(np.array_equal(back[k], official[k]) for k in official)
