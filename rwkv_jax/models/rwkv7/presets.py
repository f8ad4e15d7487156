"""RWKV-7 "Goose" sizes. Only byte-level sizes for tests and ``runlocal`` so far; the released World sizes
(with the LoRA ranks of the published files) come with their checkpoints' shapes."""

PRESETS = {
    "goose-tiny": dict(n_layer=2, n_embd=64, vocab_size=256, head_size=16),
}
