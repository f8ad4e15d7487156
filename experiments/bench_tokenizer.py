"""Times WorldTokenizer.encode against the reference TRIE_TOKENIZER of BlinkDL's `rwkv` package, same run.

    python experiments/bench_tokenizer.py                  # about 3 MB of mixed text
    python experiments/bench_tokenizer.py --megabytes 1 --repeats 1

The text is built here, deterministically (seed 0), from five parts:
  prose      sentences in fourteen languages and scripts (written for this script), shuffled into
             paragraphs with random numbers between them (repetitive: few distinct words);
  docs       the docstrings and comments of the Python standard library (real English prose);
  generated  made-up words of nine scripts (Latin with accents, Cyrillic, Greek, Arabic, Hebrew, Devanagari,
             Hangul, CJK, kana), drawn with Zipf frequencies from a lexicon of 20,000 per script, in
             sentences (CJK and kana without spaces): many distinct words, as in a large corpus;
  code       the Python standard library's own source files (English-like identifiers, indentation);
  random     code points drawn from every Unicode plane that has characters (emoji, CJK extensions,
             symbols, combining marks, control characters), a worst case with almost no repetition.
Each part, "text" (all but random) and "all" are encoded by both tokenizers; the ids must agree. Throughput
is MB of UTF-8 per second of CPU time of this process (both tokenizers run on one thread; CPU time is steadier
than wall time on a shared machine; wall time is printed too), the best of ``--repeats`` runs. "World" starts
every run with an empty piece cache; "warm" encodes the same text again with the cache filled by the first
run. Building either tokenizer is timed separately and not counted.
"""

import argparse
import ast
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


def docs(n_bytes: int) -> str:
    """Docstrings and comments of the standard library's modules, in file order."""
    parts, size = [], 0
    for path in sorted(
        glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True)
    ):
        with open(path, encoding="utf-8", errors="replace") as f:
            source = f.read()
        try:
            nodes = list(ast.walk(ast.parse(source)))
        except (SyntaxError, ValueError):
            continue
        strings = [ast.get_docstring(node) for node in nodes if isinstance(node, DOCUMENTED)]
        comments = [line.strip()[1:].strip() for line in source.splitlines() if line.strip().startswith("#")]
        for text in [*filter(None, strings), " ".join(comments)]:
            parts.append(text + "\n\n")
            size += len(parts[-1].encode())
        if size >= n_bytes:
            break
    return "".join(parts)


DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# (letters, whether words are separated by spaces) of the scripts of the generated part.
SCRIPTS = [
    ("abcdefghijklmnopqrstuvwxyzéèàçüöäßñõ", True),
    ("абвгдеёжзийклмнопрстуфхцчшщъыьэюя", True),
    ("αβγδεζηθικλμνξοπρστυφχψωάέήίόύώ", True),
    ("ابتثجحخدذرزسشصضطظعغفقكلمنهوي", True),
    ("אבגדהוזחטיכלמנסעפצקרשת", True),
    ("कखगघचछजझटठडढणतथदधनपफबभमयरलवशसह", True),
    ("".join(map(chr, range(0xAC00, 0xAC00 + 11172, 37))), True),
    ("".join(map(chr, range(0x4E00, 0x4E00 + 6000, 2))), False),
    ("".join(map(chr, range(0x3041, 0x3097))) + "".join(map(chr, range(0x30A1, 0x30FB))), False),
]


def generated(rng: random.Random, n_bytes: int, lexicon_size: int = 20000) -> str:
    """Sentences of made-up words, Zipf-distributed, in the scripts of SCRIPTS (one script per paragraph)."""
    lexicons = [
        ["".join(rng.choice(letters) for _ in range(rng.randint(1, 4 if spaced else 3) + spaced * 2))
         for _ in range(lexicon_size)]
        for letters, spaced in SCRIPTS
    ]  # fmt: skip
    zipf = [1 / rank for rank in range(1, lexicon_size + 1)]
    parts, size = [], 0
    while size < n_bytes:
        script = rng.randrange(len(SCRIPTS))
        words = rng.choices(lexicons[script], zipf, k=rng.randint(20, 120))
        separator = " " if SCRIPTS[script][1] else ""
        sentences = [separator.join(words[i : i + 12]) for i in range(0, len(words), 12)]
        parts.append(". ".join(sentences) + ".\n\n")
        size += len(parts[-1].encode())
    return "".join(parts)


def random_unicode(rng: random.Random, n_bytes: int) -> str:
    chars, size = [], 0
    while size < n_bytes:
        char = chr(rng.randint(*rng.choice(UNICODE_RANGES)))
        chars.append(char)
        size += len(char.encode())
    return "".join(chars)


def best_time(fn, repeats: int) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of the run with the least CPU time of ``repeats``."""
    times = []
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        times.append((time.process_time() - cpu, time.perf_counter() - wall))
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
        "prose": prose(rng, int(0.25 * total)),
        "docs": docs(int(0.20 * total)),
        "generated": generated(rng, int(0.20 * total)),
        "code": code(int(0.25 * total)),
        "random": random_unicode(rng, int(0.10 * total)),
    }
    parts["text"] = "".join(parts[name] for name in ("prose", "docs", "generated", "code"))
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

    print("MB/s of CPU time (ratio to TRIE_TOKENIZER); wall-time ratios in the last columns")
    header = ["part", "MB", "tokens", "TRIE", "World", "ratio", "warm", "ratio", "wall", "warm"]
    print(
        f"{header[0]:>9} {header[1]:>5} {header[2]:>8}" + "".join(f" {h:>6}" for h in header[3:]), "ids agree"
    )
    for name, text in parts.items():
        megabytes = len(text.encode()) / 1e6
        expected, ids = reference.encode(text), encode_cold(text)
        ref_cpu, ref_wall = best_time(lambda text=text: reference.encode(text), args.repeats)
        cold_cpu, cold_wall = best_time(lambda text=text: encode_cold(text), args.repeats)
        warm_cpu, warm_wall = best_time(lambda text=text: tokenizer.encode(text), args.repeats)
        figures = [megabytes / ref_cpu, megabytes / cold_cpu, ref_cpu / cold_cpu, megabytes / warm_cpu]
        figures += [ref_cpu / warm_cpu, ref_wall / cold_wall, ref_wall / warm_wall]
        print(
            f"{name:>9} {megabytes:5.2f} {len(ids):8d}" + "".join(f" {x:6.1f}" for x in figures),
            ids == expected,
        )
        if ids != expected:
            raise SystemExit(f"ids differ on the {name} part")


if __name__ == "__main__":
    main()
