"""experiments/bench_training.py: the model FLOPs it divides by are the closed-form count of the Finch."""

from tests.conftest import load_experiment


def test_model_flops_per_token_counts_every_matrix_product_but_the_embedding(tmp_path):
    bench = load_experiment("bench_training")
    layers, width, vocab, ffn, lora_mix, lora_decay = 2, 128, 256, 448, 32, 64
    path = bench.write_model(dict(n_layer=layers, n_embd=width), vocab, str(tmp_path))
    per_layer = (
        5 * width * width  # receptance, key, value, gate, output
        + 2 * 5 * lora_mix * width  # ddlerp LoRA time_maa_w1 [C, 5 D], time_maa_w2 [5, D, C]
        + 2 * lora_decay * width  # decay LoRA time_decay_w1 [C, D], time_decay_w2 [D, C]
        + 2 * width * ffn
        + width * width  # channel mix key, value, receptance
    )
    wkv = layers * (width // 64) * 6 * 64**2 * 3  # heads x 6 N^2 forward, x 3 with the backward
    flops, wkv_flops = bench.model_flops_per_token(path)
    assert wkv_flops == wkv
    assert flops == 6 * (layers * per_layer + vocab * width) + wkv
