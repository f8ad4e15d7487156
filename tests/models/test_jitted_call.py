"""The model call runs a compiled step: same results as op by op, sees weight changes, leaves transforms
alone; rwkv_jax.decoder gives the same step as a pure function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rwkv_jax
from rwkv_jax import decoding, lowp_matmul
from rwkv_jax.models.common import Linear
from rwkv_jax.numerics import relative_error

TOKENS = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], np.int32)


@pytest.fixture(scope="module")
def finch() -> rwkv_jax.RWKV6:
    config = rwkv_jax.RWKV6Config(vocab_size=64, n_layer=2, n_embd=32, head_size=16, init="plain")
    return rwkv_jax.RWKV6(config, rngs=nnx.Rngs(0))


def test_call_equals_op_by_op_forward_and_last_only_is_the_last_position(finch):
    logits, state = finch(TOKENS)
    eager_logits, eager_state = finch.forward(TOKENS)
    assert relative_error(logits, eager_logits) < 1e-6  # measured 0 and 1.1e-7 (op fusion differs)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(eager_state), strict=True):
        assert relative_error(a, b) < 1.5e-6  # measured 1.5e-7
    last, last_state = finch(TOKENS, last_only=True)
    assert last.shape == (2, 1, 64)
    assert relative_error(last[:, 0], logits[:, -1]) < 1e-6  # measured 0
    # measured 0; left at 1e-6 like the call-vs-forward logits above (a different program rounds 1.1e-7)
    assert relative_error(jax.tree.leaves(last_state)[1], jax.tree.leaves(state)[1]) < 1e-6


def compiled_programs(step: decoding.Step) -> int:
    """Programs compiled so far by ``step``: the whole step's, and its layer-wise pieces' (distinct ones)."""
    pieces = set()
    for layerwise in (step.one_token, step.prompt):
        if layerwise is not None:
            pieces |= {layerwise.embed, *layerwise.heads.values(), *layerwise.blocks}
    return step.whole._cache_size() + sum(piece._cache_size() for piece in pieces)


def test_one_compiled_program_per_input_shape(finch):
    finch(TOKENS)
    step = decoding._ENTRIES[finch].step
    _, state = finch(TOKENS)
    finch(TOKENS[:, :1], state)
    before = compiled_programs(step)
    finch(TOKENS, state)
    finch(TOKENS[:, 1:2], state)  # same shapes as calls before: no new program
    assert compiled_programs(step) == before


def test_changing_a_weight_changes_the_next_call():
    config = rwkv_jax.RWKV6Config(vocab_size=64, n_layer=2, n_embd=32, head_size=16, init="plain")
    model = rwkv_jax.RWKV6(config, rngs=nnx.Rngs(1))
    before, _ = model(TOKENS)
    model.head.kernel[...] = 2 * model.head.kernel[...]  # in place, through the variable
    doubled, _ = model(TOKENS)
    assert relative_error(doubled, 2 * before) < 1e-7  # measured 0 (doubling is exact; 1e-7 is a floor)
    kernel = jax.random.normal(jax.random.key(2), (32, 64), jnp.float32)
    model.head = Linear(32, 64, ("embed", "vocab"), kernel=kernel)  # a replaced sub-module
    replaced, _ = model(TOKENS)
    assert relative_error(replaced, model.forward(TOKENS)[0]) < 6e-7  # measured 0 and 6e-8
    assert relative_error(replaced, doubled) > 0.1  # measured 1.1


def test_training_inside_its_own_jit_is_unaffected(finch):
    graphdef, params = nnx.split(finch)
    tokens = jnp.asarray(TOKENS)

    def loss(params):  # training code: the model merged from traced parameters inside jit / grad
        logits, _ = nnx.merge(graphdef, params)(tokens)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1))

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    logits, _ = finch.forward(TOKENS)
    assert relative_error(value, jnp.mean(jax.nn.logsumexp(logits, axis=-1))) < 1e-6  # measured 0
    assert float(jnp.abs(grads["head"]["kernel"][...]).sum()) > 0
    assert not any(decoding.is_traced(e.values) for e in decoding._ENTRIES.values())


def test_decoder_step_is_a_pure_function_usable_in_a_scan(finch):
    jitted = rwkv_jax.decoder(finch)
    logits, _ = finch(TOKENS)

    def feed(state, token):  # a custom decoding loop: one token per scan step
        out, state = jitted.step(jitted.params, token[:, None], state)
        return state, out[:, 0]

    _, per_token = jax.lax.scan(feed, jitted.init_state(2), jnp.asarray(TOKENS).T)
    assert relative_error(per_token.transpose(1, 0, 2), logits) < 2e-6  # measured 4e-7, 4.5e-9


def test_token_ids_are_checked_before_the_jitted_call(finch):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        finch(np.array([[1, 64]], np.int32))


def test_eager_flag_runs_op_by_op(finch, monkeypatch):
    monkeypatch.setattr(finch, "eager", True)
    monkeypatch.setattr(decoding, "compiled_call", None)  # would fail if reached
    logits, _ = finch(TOKENS[:, :2])
    assert logits.shape == (2, 2, 64)


def test_one_token_step_holds_no_stacked_copy_of_the_block_weights():
    # A scan over per-layer parameters stacks them inside the call: a temporary copy of the block weights
    # at every step (370 MiB of the 12 x 768 Finch's 751 MiB, XLA's memory analysis, before this test); a
    # scan over stored stacks copies one layer's weights per step (33.8 MiB). The 0.1B width (abstract
    # parameters, nothing initialised), where the temporaries are activations: the ddlerp's per-slot
    # slices of time_maa_w2, which XLA:CPU copied (1.5 MiB, 0.012x, before rwkv6.layers.slot_offsets took
    # one product for few rows), would be a large share of the blocks at a tiny width.
    config = rwkv_jax.RWKV6Config(vocab_size=64, n_layer=4, n_embd=768, head_size=64, init="plain")
    model = nnx.eval_shape(lambda: rwkv_jax.RWKV6(config, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)
    step = decoding.compiled_step(decoding.Structure(graphdef))
    lowered = step.lower(decoding.Params(params), jnp.ones((1, 1), jnp.int32), model.init_state(1))
    temporaries = lowered.compile().memory_analysis().temp_size_in_bytes
    blocks = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params["blocks"]))
    assert temporaries < 0.002 * blocks  # measured 0.0002x (0.03 of 122 MiB)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the float32 working copy is made on CPU only")
@pytest.mark.parametrize("kernel", [True, False], ids=["lowp-kernel", "no-kernel"])
def test_bfloat16_step_reads_a_float32_copy_only_of_what_no_kernel_multiplies(kernel, monkeypatch):
    """Linear kernels and LoRA matrices as stored where the lowp_matmul kernel builds, else a float32
    working copy; the embedding always as stored (one row a token); the token-shift weights as they are
    (float32)."""
    if kernel and not lowp_matmul.available(jnp.bfloat16):
        pytest.skip("the lowp_matmul kernel is not available here")
    if not kernel:
        monkeypatch.setattr(lowp_matmul, "_fast_formats", lambda: 0)
    config = rwkv_jax.RWKV6Config(vocab_size=64, n_layer=2, n_embd=32, head_size=16, dtype="bfloat16")
    jitted = rwkv_jax.decoder(rwkv_jax.RWKV6(config, rngs=nnx.Rngs(0)))
    assert jitted.params.layers["emb"]["weight"][...].dtype == jnp.bfloat16
    multiplied = jnp.bfloat16 if kernel else jnp.float32
    assert jitted.params.layers["head"]["kernel"][...].dtype == multiplied
    mix = jitted.params.layers["blocks"][1]["att"]["mix"]
    assert mix["time_maa_w2"][...].dtype == multiplied
    assert mix["time_maa_x"][...].dtype == jnp.float32
    logits, _ = jitted.step(jitted.params, TOKENS[:1, :3], jitted.init_state(1))
    assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())


def goose(n_layer: int, seed: int = 0) -> rwkv_jax.RWKV7:
    config = rwkv_jax.RWKV7Config(vocab_size=64, n_layer=n_layer, n_embd=32, head_size=16, init="plain")
    return rwkv_jax.RWKV7(config, rngs=nnx.Rngs(seed))


def kernel_of_layer(model: nnx.Module, layer: int) -> nnx.Variable:
    return model.blocks[layer].att.receptance.kernel


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the blocks are stored stacked on CPU only")
def test_stacked_prefill_equals_the_per_layer_model_and_shares_its_memory():
    model = goose(4)  # block 0 alone (it makes v_first), blocks 1-3 one stack
    expected, expected_state = model.forward(TOKENS)  # op by op, one block per layer
    logits, state = model(TOKENS)
    assert relative_error(logits, expected) < 1e-7  # measured 1.1e-8
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(expected_state), strict=True):
        assert relative_error(a, b) < 1.5e-6  # measured <= 1.6e-7
    stack = decoding.decoder(model).params.stacked["blocks"][1]["layers"]["att"]["receptance"]["kernel"]
    layer = kernel_of_layer(model, 3).get_raw_value()  # the model's own variable: a view of the stack
    assert layer.unsafe_buffer_pointer() == stack[...].unsafe_buffer_pointer() + 2 * layer.nbytes
    one, _ = model(TOKENS[:, :1])  # the loop over the views
    assert relative_error(one, expected[:, :1]) < 1e-6  # measured 0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the blocks are stored stacked on CPU only")
def test_editing_a_stacked_block_weight_changes_the_next_call():
    model = goose(4, seed=1)
    before, _ = model(TOKENS)
    kernel = kernel_of_layer(model, 2)
    kernel[...] = jax.random.normal(jax.random.key(3), kernel.shape, kernel.dtype)
    edited, _ = model(TOKENS)
    assert relative_error(edited, model.forward(TOKENS)[0]) < 1e-6  # measured 1.2e-7
    assert relative_error(edited, before) > 1e-3  # measured 4.9e-3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_first_call_inside_a_jit_caches_concrete_weights(dtype):
    # The first call builds the decoder's cached working copies and stacks: inside a caller's jit they
    # must still be concrete arrays (they outlive the trace), or the stacking fails on a tracer.
    config = rwkv_jax.RWKV7Config(
        vocab_size=64, n_layer=4, n_embd=32, head_size=16, init="plain", dtype=dtype
    )
    model = rwkv_jax.RWKV7(config, rngs=nnx.Rngs(2))
    inside = jax.jit(lambda tokens: model(tokens)[0])(TOKENS)
    outside, _ = model(TOKENS)  # reads the cache the jitted call left
    assert relative_error(outside, inside) < 1e-6  # measured 0
    if dtype == "float32":  # (the op-by-op bfloat16 forward is slow to run and computes in bfloat16)
        assert relative_error(inside, model.forward(TOKENS)[0]) < 1e-6  # measured 0


def prefill_ops(n_layer: int) -> tuple[int, int]:
    """(StableHLO ops, matrix products) of a 4-token prefill's program for a Goose of ``n_layer`` layers."""
    jitted = rwkv_jax.decoder(goose(n_layer))
    text = jitted.step.lower(jitted.params, jnp.ones((1, 4), jnp.int32), jitted.init_state(1)).as_text()
    return text.count("stablehlo."), text.count("stablehlo.dot_general")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the blocks are stored stacked on CPU only")
def test_prefill_program_does_not_grow_with_depth():
    (ops3, dots3), (ops6, dots6) = prefill_ops(3), prefill_ops(6)
    assert dots6 == dots3  # one block in the program whatever the depth
    # A layer adds only the stacking and slicing of its state (a tuple of layers): measured 965 ops at 3
    # layers, 992 at 6 (9 a layer; a block is ~300 ops).
    assert ops6 - ops3 <= 3 * 10


LAYERWISE_FAMILIES = {
    "rwkv4": lambda: rwkv_jax.RWKV4(rwkv_jax.RWKV4Config(64, 7, 32, 64), rngs=nnx.Rngs(3)),
    "eagle": lambda: rwkv_jax.RWKV6(
        rwkv_jax.RWKV6Config(vocab_size=64, n_layer=7, n_embd=32, head_size=16, version="5.2"),
        rngs=nnx.Rngs(3),
    ),
    "finch": lambda: rwkv_jax.RWKV6(
        rwkv_jax.RWKV6Config(vocab_size=64, n_layer=7, n_embd=32, head_size=16, init="plain"),
        rngs=nnx.Rngs(3),
    ),
    "goose": lambda: goose(7, seed=3),
}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the step runs layer by layer on CPU only")
@pytest.mark.parametrize("family", sorted(LAYERWISE_FAMILIES))
def test_step_layer_by_layer_equals_the_whole_program(family):
    model = LAYERWISE_FAMILIES[family]()
    jitted = rwkv_jax.decoder(model)
    one_token, prompt = jitted.step.one_token, jitted.step.prompt
    # Block 0's ln0 runs in the embedding's program, so every layer shares one block program: one token in
    # groups of 3 (blocks 0-2, 3-5, and 6 alone: two programs), a prompt one block a program. Goose's block 0
    # (it makes v_first, without the value residual's weights) has a program of its own.
    # Goose decodes with the whole program (RWKV7.layerwise_decoding).
    goose_family = family == "goose"
    assert (one_token is None) == goose_family
    assert goose_family or (one_token.firsts == (0, 3, 6) and len(set(one_token.blocks)) == 2)
    assert prompt.firsts == tuple(range(7)) and len(set(prompt.blocks)) == 1 + goose_family
    _, state = model(TOKENS[:, :3])
    for tokens in (TOKENS[:, 3:4], TOKENS):
        for last_only in (False, True):
            logits, new_state = jitted.step(jitted.params, tokens, state, last_only=last_only)
            whole_logits, whole_state = jitted.step.whole(jitted.params, tokens, state, last_only=last_only)
            # The one-token pieces compile with another emitter (rwkv_jax.layerwise): the head's rounding
            # differs slightly (measured <= 1.3e-7; the prompt's 0 under XLA's default emitters).
            assert relative_error(logits, whole_logits) < 1.3e-6
            for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(whole_state), strict=True):
                assert relative_error(a, b) < 1e-6  # measured <= 1.2e-7
            forward, _ = model.forward(tokens, state, last_only=last_only)
            assert relative_error(logits, forward) < 1.7e-6  # measured <= 1.7e-7
    assert goose_family or one_token.heads[True]._cache_size() == 0  # one position: the same head program
