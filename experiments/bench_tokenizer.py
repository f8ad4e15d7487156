"""Times WorldTokenizer.encode against the reference TRIE_TOKENIZER of BlinkDL's `rwkv` package, same run.

    python experiments/bench_tokenizer.py                  # about 3 MB of mixed text
    python experiments/bench_tokenizer.py --megabytes 1 --repeats 1

The text is built here, deterministically (seed 0), from three parts:
  prose   sentences in fourteen languages and scripts (written for this script), shuffled into paragraphs
          with random numbers between them;
  code    the Python standard library's own source files (English-like identifiers, comments, indentation);
  random  code points drawn from every Unicode plane that has characters (emoji, CJK extensions, symbols,
          combining marks, control characters), a worst case with almost no repetition.
Each part, "text" (prose then code: natural text) and "all" are encoded by both tokenizers; the ids must
agree. Throughput is MB of UTF-8 per second of CPU time of this process (both tokenizers run on one thread;
CPU time is steadier than wall time on a shared machine), the best of ``--repeats`` runs. "World" starts
every run with an empty piece cache; "warm" encodes the same text again with the cache filled by the first
run. Building either tokenizer is timed separately and not counted.
"""

import argparse
import glob
import os
import random
import sysconfig
import time

from rwkv_jax.tokenizers import world

SENTENCES = [
    "The committee postponed its decision until the spring, citing the lack of reliable figures.",
    "She walked along the harbour at dawn, counting the fishing boats that had not yet returned.",
    "Le comité a reporté sa décision au printemps, faute de chiffres fiables.",
    "Die Brücke über den Fluss wurde nach dem Hochwasser vollständig erneuert.",
    "El tren llegó con dos horas de retraso porque la nieve había bloqueado las vías.",
    "A biblioteca municipal abre aos domingos durante o verão.",
    "Москва встретила нас дождём, но к вечеру небо прояснилось.",
    "Η βιβλιοθήκη της πόλης ανοίγει νωρίς κάθε Σάββατο.",
    "研究小组在山区发现了一种以前未被记录的植物。",
    "雨の日には、駅前の小さな喫茶店がいつも混んでいる。",
    "오늘 회의는 오후 세 시에 대회의실에서 열립니다.",
    "हमने नदी के किनारे एक छोटा सा घर किराए पर लिया।",
    "وصلت الرسالة متأخرة بثلاثة أيام بسبب العاصفة.",
    "הספרייה תהיה סגורה בשבוע הבא לרגל שיפוצים.",
    "Dziś rano w parku widziałem dwie wiewiórki i jednego lisa.",
    "Chúng tôi đã đi bộ qua khu chợ đêm và ăn thử nhiều món lạ.",
    "Emoji in text: the launch went well 🚀🎉, the demo less so 😅 — 👩‍💻 will fix it 🔧.",
]

# (first, last) code point of ranges that hold assigned characters, across the planes.
UNICODE_RANGES = [
    (0x0000, 0x001F), (0x0020, 0x024F), (0x0300, 0x036F), (0x0370, 0x052F), (0x0590, 0x06FF),
    (0x0900, 0x0DFF), (0x1100, 0x11FF), (0x2000, 0x2BFF), (0x3000, 0x30FF), (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3), (0xE000, 0xF8FF), (0xFF00, 0xFFEF), (0x10000, 0x1034F), (0x1D400, 0x1D7FF),
    (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF), (0x30000, 0x3134F), (0xE0000, 0xE007F), (0xF0000, 0xF00FF),
]  # fmt: skip


def prose(rng: random.Random, n_bytes: int) -> str:
    parts, size = [], 0
    while size < n_bytes:
        paragraph = " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(2, 8)))
        paragraph += f" ({rng.randint(0, 10**6)}, {rng.random():.3f})\n\n"
        parts.append(paragraph)
        size += len(paragraph.encode())
    return "".join(parts)


def code(n_bytes: int) -> str:
    parts, size = [], 0
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            parts.append(f.read())
        size += len(parts[-1].encode())
        if size >= n_bytes:
            break
    return "".join(parts)


def random_unicode(rng: random.Random, n_bytes: int) -> str:
    chars, size = [], 0
    while size < n_bytes:
        char = chr(rng.randint(*rng.choice(UNICODE_RANGES)))
        chars.append(char)
        size += len(char.encode())
    return "".join(chars)


def best_time(fn, repeats: int) -> float:
    """Least CPU time of this process over ``repeats`` calls (the machine is shared: wall time is noisy)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=float, default=3.0, help="total size of the text (UTF-8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tokenizer; the best is kept")
    args = parser.parse_args(argv)
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER  # the reference; a test-only dependency

    rng = random.Random(0)
    total = int(args.megabytes * 1e6)
    parts = {
        "prose": prose(rng, int(0.55 * total)),
        "code": code(int(0.35 * total)),
        "random": random_unicode(rng, int(0.10 * total)),
    }
    parts["text"] = parts["prose"] + parts["code"]
    parts["all"] = parts["text"] + parts["random"]

    start = time.perf_counter()
    reference = TRIE_TOKENIZER(str(world.VOCAB_FILE))
    trie_build = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer = world.WorldTokenizer()
    tokenizer.encode("warm up")
    world_build = time.perf_counter() - start
    print(f"build: TRIE_TOKENIZER {trie_build:.2f} s, WorldTokenizer {world_build:.2f} s")

    def encode_cold(text: str) -> list[int]:
        tokenizer._matcher.cache.clear()
        return tokenizer.encode(text)

    print(f"{'part':>7} {'MB':>6} {'tokens':>9} {'TRIE MB/s':>10} {'World MB/s':>11} {'ratio':>6}", end="")
    print(f" {'warm MB/s':>10} {'ratio':>6}  ids agree")
    for name, text in parts.items():
        megabytes = len(text.encode()) / 1e6
        expected, ids = reference.encode(text), encode_cold(text)
        t_ref = best_time(lambda text=text: reference.encode(text), args.repeats)
        t_world = best_time(lambda text=text: encode_cold(text), args.repeats)
        t_warm = best_time(lambda text=text: tokenizer.encode(text), args.repeats)
        print(
            f"{name:>7} {megabytes:6.2f} {len(ids):9d} {megabytes / t_ref:10.2f} {megabytes / t_world:11.2f} "
            f"{t_ref / t_world:6.1f} {megabytes / t_warm:10.2f} {t_ref / t_warm:6.1f}  {ids == expected}"
        )
        if ids != expected:
            raise SystemExit(f"ids differ on the {name} part")


if __name__ == "__main__":
    main()
