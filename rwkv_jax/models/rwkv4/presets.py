"""RWKV-4 sizes: the Pile models of arXiv 2305.13048 (Table 1; GPT-NeoX 20B tokenizer, vocabulary 50277,
trained at context 1024) and a byte-level size for tests and ``runlocal``. FFN width: 4 x n_embd (the config
default)."""

PILE_VOCAB = 50277

PRESETS = {
    "rwkv4-169m": dict(n_layer=12, n_embd=768, vocab_size=PILE_VOCAB),
    "rwkv4-430m": dict(n_layer=24, n_embd=1024, vocab_size=PILE_VOCAB),
    "rwkv4-1b5": dict(n_layer=24, n_embd=2048, vocab_size=PILE_VOCAB),
    "rwkv4-3b": dict(n_layer=32, n_embd=2560, vocab_size=PILE_VOCAB),
    "rwkv4-7b": dict(n_layer=32, n_embd=4096, vocab_size=PILE_VOCAB),
    "rwkv4-14b": dict(n_layer=40, n_embd=5120, vocab_size=PILE_VOCAB),
    # Not from the paper: byte level, for tests and runlocal.
    "rwkv4-tiny": dict(n_layer=2, n_embd=64, vocab_size=256),
}
