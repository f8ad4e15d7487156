"""Eagle (RWKV-5.2) and Finch (RWKV-6) sizes: the World models of arXiv 2404.05892 (Table 1; RWKV World
tokenizer, vocabulary 65536, head size 64, FFN width ``int(3.5 C) // 32 * 32`` as the config default), and
byte-level sizes for tests, ``runlocal`` and the CPU demo."""

WORLD_VOCAB = 65536

PRESETS = {
    "eagle-0b4": dict(version="5.2", n_layer=24, n_embd=1024, vocab_size=WORLD_VOCAB),
    "eagle-1b5": dict(version="5.2", n_layer=24, n_embd=2048, vocab_size=WORLD_VOCAB),
    "eagle-3b": dict(version="5.2", n_layer=32, n_embd=2560, vocab_size=WORLD_VOCAB),
    "eagle-7b": dict(version="5.2", n_layer=32, n_embd=4096, vocab_size=WORLD_VOCAB),
    "finch-1b6": dict(version="6", n_layer=24, n_embd=2048, vocab_size=WORLD_VOCAB),
    "finch-3b1": dict(version="6", n_layer=32, n_embd=2560, vocab_size=WORLD_VOCAB),
    # Not from the paper: byte level, for tests, runlocal and the CPU demo.
    "eagle-tiny": dict(version="5.2", n_layer=2, n_embd=64, vocab_size=256, head_size=16),
    "finch-tiny": dict(version="6", n_layer=2, n_embd=64, vocab_size=256, head_size=16),
    "finch-demo": dict(version="6", n_layer=4, n_embd=128, vocab_size=256, head_size=32),
    "rwkv5.1-tiny": dict(version="5.1", n_layer=2, n_embd=64, vocab_size=256, head_size=16),
}
