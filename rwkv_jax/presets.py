"""Model sizes as published, one lookup table for every config (big_vision's ``decode_variant`` habit).

Sources: "RWKV: Reinventing RNNs for the Transformer Era" (arXiv 2305.13048, Table 1, the RWKV-4 Pile models,
GPT-NeoX 20B tokenizer, vocabulary 50277) and "Eagle and Finch" (arXiv 2404.05892, Table 1, the World models,
RWKV World tokenizer, vocabulary 65536, head size 64). The FFN width follows RWKV-LM: 4 x n_embd for RWKV-4,
int(3.5 x n_embd) rounded down to a multiple of 32 for Eagle and Finch. The ``*-tiny`` and ``finch-demo``
entries are not from the papers: they are the sizes used by tests, ``runlocal`` and the CPU demo.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Preset:
    """One model size. ``version`` is "4", "5.2" (Eagle) or "6" (Finch)."""

    version: str
    n_layer: int
    n_embd: int
    vocab_size: int
    head_size: int = 64  # Eagle/Finch only
    ctx_len: int = 4096  # the training context length of the published model

    @property
    def family(self) -> str:
        """The model class that builds it: "rwkv4" or "rwkv6" (which covers Eagle and Finch)."""
        return "rwkv4" if self.version == "4" else "rwkv6"

    @property
    def ffn_dim(self) -> int:
        """The channel-mix hidden width as RWKV-LM computes it."""
        if self.version == "4":
            return 4 * self.n_embd
        return int(self.n_embd * 3.5) // 32 * 32


PILE_VOCAB = 50277
WORLD_VOCAB = 65536

PRESETS: dict[str, Preset] = {
    # RWKV-4 Pile (arXiv 2305.13048, Table 1), trained at context 1024.
    "rwkv4-169m": Preset("4", 12, 768, PILE_VOCAB, ctx_len=1024),
    "rwkv4-430m": Preset("4", 24, 1024, PILE_VOCAB, ctx_len=1024),
    "rwkv4-1b5": Preset("4", 24, 2048, PILE_VOCAB, ctx_len=1024),
    "rwkv4-3b": Preset("4", 32, 2560, PILE_VOCAB, ctx_len=1024),
    "rwkv4-7b": Preset("4", 32, 4096, PILE_VOCAB, ctx_len=1024),
    "rwkv4-14b": Preset("4", 40, 5120, PILE_VOCAB, ctx_len=1024),
    # Eagle = RWKV-5.2 World (arXiv 2404.05892, Table 1).
    "eagle-0b4": Preset("5.2", 24, 1024, WORLD_VOCAB),
    "eagle-1b5": Preset("5.2", 24, 2048, WORLD_VOCAB),
    "eagle-3b": Preset("5.2", 32, 2560, WORLD_VOCAB),
    "eagle-7b": Preset("5.2", 32, 4096, WORLD_VOCAB),
    # Finch = RWKV-6 World (arXiv 2404.05892, Table 1).
    "finch-1b6": Preset("6", 24, 2048, WORLD_VOCAB),
    "finch-3b1": Preset("6", 32, 2560, WORLD_VOCAB),
    # Not from the papers: byte-level sizes for tests, runlocal and the CPU demo.
    "rwkv4-tiny": Preset("4", 2, 64, 256, ctx_len=128),
    "eagle-tiny": Preset("5.2", 2, 64, 256, head_size=16, ctx_len=128),
    "finch-tiny": Preset("6", 2, 64, 256, head_size=16, ctx_len=128),
    "finch-demo": Preset("6", 4, 128, 256, head_size=32, ctx_len=128),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is an error listing the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]
