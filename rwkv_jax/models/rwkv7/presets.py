"""RWKV-7 "Goose" sizes: the released World and G1 checkpoints (RWKV World tokenizer, vocabulary 65536, head
size 64, FFN 4 C), with the LoRA ranks of the published files, which differ from the trainer's suggestion
(``rwkv7_init.lora_rank``); and byte-level sizes for tests, ``runlocal`` and the CPU demo.

Where each number comes from (layers L, width C; LoRA ranks of the decay, in-context rate, value residual,
gate):

- 0.1B (RWKV-x070-World-0.1B, fla-hub/rwkv7-191M-world): L12 C768, ranks 64/64/32/128, BlinkDL/RWKV-LM
  ``RWKV-v7/rwkv_v7_demo.py`` ("for 0.1B": n_layer 12, n_embd 768, D_DECAY_LORA 64, D_AAA_LORA 64,
  D_MV_LORA 32, D_GATE_LORA 128).
- 0.4B (RWKV-x070-World-0.4B): L24 C1024, ranks 64/64/32/128, the Hugging Face conversion
  fla-hub/rwkv7-0.4B-world ``config.json`` (decay/a/v/gate_low_rank_dim); RWKV-LM ``README.md`` counts
  "V65536-L24-D1024 #params = ... 2*D*(64+32+64+128) = 450.834432 M" (tested exactly).
- 1.5B (RWKV-x070-World-1.5B): L24 C2048, ranks 96/96/64/256, fla-hub/rwkv7-1.5B-world ``config.json`` and
  RWKV-LM ``RWKV-v7/train_temp/README.md`` ("weight example for 1.5B": w1 [2048, 96], a1 [2048, 96],
  v1 [2048, 64], g1 [2048, 256]).
- 2.9B (RWKV-x070-World-2.9B, G1 2.9B): L32 C2560, ranks 96/96/64/320: a vllm-rwkv conversion script's
  config for rwkv7-g1i-2.9b (found by code search; repository not named there); L and C also in RWKV-LM
  ``README.md`` ("3B = --n_layer 32 --n_embd 2560").
- 7.2B (rwkv7-g0-7.2b-20250722): L32 C4096, ranks 128/128/96/480; 13.3B (rwkv7-g0b-13.3b-20251130): L61
  C4096, ranks 192/192/128/384: the model configs of aierwiki/rwkvtune
  (``rwkvtune/configs/models/rwkv7-7.2b.json`` and ``-13.3b.json``, written to load those very files:
  ``dim_att_lora`` is both the decay and the in-context-rate rank in its ``models/rwkv7/model.py``,
  ``dim_mv_lora`` the value residual's, ``dim_gate_lora`` the gate's); the same source gives 2.9B's ranks
  as above. L and C of 7.2B also in RWKV-LM ``README.md`` ("7B = --n_layer 32 --n_embd 4096").
  ``load_official`` reads the ranks from a file's shapes whatever the preset says.
"""

WORLD_VOCAB = 65536


def _world(n_layer: int, n_embd: int, ranks: tuple[int, int, int, int]) -> dict:
    decay, iclr, value, gate = ranks
    return dict(
        n_layer=n_layer, n_embd=n_embd, vocab_size=WORLD_VOCAB, head_size=64,
        decay_lora=decay, iclr_lora=iclr, value_lora=value, gate_lora=gate,
    )  # fmt: skip


PRESETS = {
    "goose-0b1": _world(12, 768, (64, 64, 32, 128)),
    "goose-0b4": _world(24, 1024, (64, 64, 32, 128)),
    "goose-1b5": _world(24, 2048, (96, 96, 64, 256)),
    "goose-2b9": _world(32, 2560, (96, 96, 64, 320)),
    "goose-7b2": _world(32, 4096, (128, 128, 96, 480)),
    "goose-13b3": _world(61, 4096, (192, 192, 128, 384)),
    # Not released: byte level, for tests, runlocal and the CPU demo.
    "goose-tiny": dict(n_layer=2, n_embd=64, vocab_size=256, head_size=16),
    "goose-demo": dict(n_layer=4, n_embd=128, vocab_size=256, head_size=32),
}
