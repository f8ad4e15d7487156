"""The lm-evaluation-harness adapter run through lm-eval itself on local task files (multiple choice,
perplexity, generation), its numbers checked against the same quantities computed directly with the model
(one full-sequence call, no state reuse); every checkpoint kind and family loads through it.

lm-eval's import and task building cost seconds, so all lm-eval tests live in this one module."""

import functools
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwkv_jax.checkpoint.hf import save_hf
from rwkv_jax.checkpoint.official import save_official
from rwkv_jax.numerics import relative_error
from rwkv_jax.presets import get_preset
from rwkv_jax.tokenizers import get_tokenizer
from rwkv_jax.training import loop
from rwkv_jax.training.config import ConfigError, check_values, default_config
from rwkv_jax.training.metrics import read_metrics
from tests.conftest import import_or_skip
from tests.models.test_rwkv7 import random_model, tiny_config
from tests.training.conftest import corpus  # noqa: F401  (the byte-level training corpus fixture)
from tests.training.conftest import tiny_config as training_config

lm_eval = import_or_skip("lm_eval", "lm-eval is not installed (pip install -e .[eval])")
from lm_eval.tasks import TaskManager  # noqa: E402

from rwkv_jax.evaluation.lm_eval_adapter import RWKVJaxLM  # noqa: E402

MC = [
    {"question": "The cat sat on the", "choices": ["mat", "dog", "in"], "answer": 0},
    {"question": "in the", "choices": ["the", "house"], "answer": 1},
    {"question": "The cat sat on the", "choices": ["sofa", "mat"], "answer": 1},  # shares a context
]
DOCUMENTS = [
    {"text": "in the the the house and the cat."},
    {"text": "The statement is true, or so they say."},
]
PROMPTS = [{"prompt": '"in', "target": " the"}, {"prompt": "The cat", "target": " sat"}]
UNTIL, MAX_GEN = "e", 6
MC_SPEC = "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'"
PPL_SPEC = "doc_to_text: ''\ndoc_to_target: '{{text}}'"
GEN_SPEC = "doc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\ngeneration_kwargs:"
GEN_SPEC += f"\n  until: ['{UNTIL}']\n  max_gen_toks: {MAX_GEN}\n  do_sample: false"
TASKS = {  # name: (rows, output type, the rest of the YAML, metrics)
    "tiny_mc": (MC, "multiple_choice", MC_SPEC, ["acc"]),
    "tiny_ppl": (DOCUMENTS, "loglikelihood_rolling", PPL_SPEC, ["word_perplexity", "bits_per_byte"]),
    "tiny_gen": (PROMPTS, "generate_until", GEN_SPEC, ["exact_match"]),
}
# Relative errors (float32) of the state-cached scoring through lm-eval against one full-sequence call,
# measured 2026-12: multiple choice 1.9e-8, documents 2.7e-9 (goose-tiny); the kinds: HF folder 6.1e-8,
# Finch 7.8e-9, RWKV-4 3.0e-8. Word perplexity is compared as its logarithm (the mean negative log-likelihood
# per word): the perplexity itself, exp(25.7) here, multiplies that error by 25.7. Measured 5e-10 here and
# 1.0e-8 on CI (2.6e-7 as a perplexity, which failed a bound set on it).
MC_BOUND, DOCUMENT_BOUND, PERPLEXITY_BOUND, KIND_BOUND = 2e-7, 3e-8, 1e-7, 6e-7


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """The three tasks as lm-eval YAML files reading local JSON-lines data."""
    folder = tmp_path_factory.mktemp("tasks")
    for name, (rows, output_type, spec, metrics) in TASKS.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        source = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test"
        metric_list = "".join(f"\n  - metric: {metric}" for metric in metrics)
        yaml = f"task: {name}\n{source}\noutput_type: {output_type}\n{spec}\nmetric_list:{metric_list}\n"
        (folder / f"{name}.yaml").write_text(yaml)
    return folder


@pytest.fixture(scope="module")
def goose(tmp_path_factory):
    """A random byte-level goose-tiny, saved as .pth."""
    model = get_preset("goose-tiny").build(seed=3)
    path = tmp_path_factory.mktemp("goose") / "goose.pth"
    save_official(model, path)
    return model, path


@pytest.fixture(scope="module")
def task_manager(task_dir):
    # Only the local tasks: indexing lm-eval's own thousands of task files takes about 6 s here.
    return TaskManager(include_path=str(task_dir), include_defaults=False)


def evaluate(model, task_manager, tasks, **kwargs):
    return lm_eval.simple_evaluate(
        model=model, tasks=tasks, task_manager=task_manager, log_samples=True, **kwargs
    )


class Direct:
    """The quantities lm-eval asks for, computed with plain full-sequence calls of ``model`` (no state
    reuse), every call on one right-padded [8, 48] batch so that it compiles once (the model is causal:
    padding after a sequence changes nothing before it)."""

    SHAPE = (8, 48)

    def __init__(self, model):
        self.apply = jax.jit(lambda tokens: model(tokens)[0])

    def logprobs(self, sequences: list[list[int]]) -> list[np.ndarray]:
        """Per sequence, log p(token t | tokens before t) for t >= 1, in float64 from the logits."""
        batch = np.zeros(self.SHAPE, np.int32)
        for row, tokens in enumerate(sequences):
            batch[row, : len(tokens)] = tokens
        logits = np.asarray(self.apply(jnp.asarray(batch)), np.float64)
        logprobs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        return [logprobs[r, np.arange(len(s) - 1), s[1:]] for r, s in enumerate(sequences)]

    def continuations(self, pairs: list[tuple[list[int], list[int]]]) -> np.ndarray:
        rows = self.logprobs([context + continuation for context, continuation in pairs])
        return np.array(
            [
                row[len(row) - len(continuation) :].sum()
                for row, (_, continuation) in zip(rows, pairs, strict=True)
            ]
        )

    def greedy(self, prompts: list[list[int]], steps: int) -> list[list[int]]:
        tokens = [list(p) for p in prompts]
        for _ in range(steps):
            batch = np.zeros(self.SHAPE, np.int32)
            for row, t in enumerate(tokens):
                batch[row, : len(t)] = t
            logits = np.asarray(self.apply(jnp.asarray(batch)))
            for row, t in enumerate(tokens):
                t.append(int(logits[row, len(t) - 1].argmax()))
        return [t[len(p) :] for t, p in zip(tokens, prompts, strict=True)]


def mc_pairs(rows: list[dict]) -> list[tuple[list[int], list[int]]]:
    byte = get_tokenizer("byte")
    return [
        (byte.encode(row["question"]), byte.encode(" " + choice)) for row in rows for choice in row["choices"]
    ]


def sample_logprobs(out: dict, task: str) -> np.ndarray:
    """The log-likelihood of every request of ``task``'s logged samples, in document order (a response is
    ``(logprob, greedy)`` for loglikelihood requests, the logprob alone for rolling ones)."""
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    responses = [request[0] for s in samples for request in s["resps"]]
    return np.array([float(r[0] if isinstance(r, tuple | list) else r) for r in responses])


def test_multiple_choice_perplexity_and_generation_through_lm_eval_match_the_model(goose, task_manager):
    model, path = goose
    lm = RWKVJaxLM(path=str(path), batch_size=2, pieces="8-1")
    out = evaluate(lm, task_manager, list(TASKS))
    direct, byte = Direct(model), get_tokenizer("byte")

    expected = direct.continuations(mc_pairs(MC))
    assert relative_error(sample_logprobs(out, "tiny_mc"), expected) < MC_BOUND
    starts = np.cumsum([0] + [len(row["choices"]) for row in MC])
    chosen = [int(np.argmax(expected[a:b])) for a, b in itertools.pairwise(starts)]
    accuracy = np.mean([c == row["answer"] for c, row in zip(chosen, MC, strict=True)])
    assert out["results"]["tiny_mc"]["acc,none"] == accuracy

    # Rolling: every byte predicted from the prefix id (0: the byte tokenizer has no end-of-document id).
    expected = np.array(
        [row.sum() for row in direct.logprobs([[0, *byte.encode(d["text"])] for d in DOCUMENTS])]
    )
    assert relative_error(sample_logprobs(out, "tiny_ppl"), expected) < DOCUMENT_BOUND
    words = sum(len(row["text"].split()) for row in DOCUMENTS)
    word_perplexity = math.exp(-expected.sum() / words)
    log_perplexity = math.log(out["results"]["tiny_ppl"]["word_perplexity,none"])
    assert relative_error(log_perplexity, math.log(word_perplexity)) < PERPLEXITY_BOUND

    samples = sorted(out["samples"]["tiny_gen"], key=lambda s: s["doc_id"])
    greedy = direct.greedy([byte.encode(row["prompt"]) for row in PROMPTS], MAX_GEN)
    assert [s["resps"][0][0] for s in samples] == [byte.decode(g).split(UNTIL)[0] for g in greedy]


def test_the_command_line_passes_lm_evals_flags_and_writes_results(goose, task_dir, tmp_path, monkeypatch):
    from experiments.lm_eval import main

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(TaskManager, include_defaults=False))
    _, path = goose
    args = f"--model_args path={path},tokenizer=byte,dtype=bfloat16,pieces=8-1 --tasks tiny_mc --limit 2"
    args += (
        f" --include_path {task_dir} --num_fewshot 0 --output_path {tmp_path} --log_samples --batch_size 4"
    )
    assert main(args.split()) == 0
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert results["config"]["model"] == "rwkv_jax" and results["n-samples"]["tiny_mc"]["effective"] == 2
    assert len(list(tmp_path.rglob("samples_tiny_mc_*.jsonl"))) == 1


def test_a_training_run_logs_lm_eval_scores_and_the_adapter_reads_its_workdir(
    task_dir, task_manager, tmp_path, request
):
    config = training_config(request.getfixturevalue("corpus"), family="rwkv7")
    config.train.steps, config.ckpt.every, config.eval.every, config.eval.batches = 2, 0, 0, 1
    config.eval.lm_eval_tasks, config.eval.lm_eval_include_path = "tiny_mc", str(task_dir)
    config.eval.lm_eval_limit = 2
    loop.train_and_evaluate(config, tmp_path / "run")
    logged = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lm_eval/tiny_mc/acc" in r]
    assert [r["step"] for r in logged] == [2] and any((tmp_path / "run" / "tensorboard").iterdir())

    out = evaluate(
        "rwkv_jax", task_manager, ["tiny_mc"], model_args=f"path={tmp_path / 'run'},pieces=1", limit=2
    )
    # The same parameters and data as in the run (the kinds below check the numbers themselves).
    assert out["results"]["tiny_mc"]["acc,none"] == logged[0]["lm_eval/tiny_mc/acc"]
    assert np.isfinite(sample_logprobs(out, "tiny_mc")).all()


@pytest.mark.parametrize("kind", ["hf", "finch-tiny", "rwkv4-tiny"])
def test_every_checkpoint_kind_and_family_scores_through_the_registered_model(tmp_path, task_manager, kind):
    if kind == "hf":
        model = random_model(tiny_config(n_embd=64, head_size=64, vocab_size=256))
        save_hf(model, path := tmp_path / "hf")
    else:
        model = get_preset(kind).build(seed=1)
        save_official(model, path := tmp_path / "model.safetensors")
    out = evaluate(
        "rwkv_jax", task_manager, ["tiny_mc"], model_args=f"path={path},pieces=1", batch_size=4, limit=2
    )
    expected = Direct(model).continuations(mc_pairs(MC[:2]))
    assert relative_error(sample_logprobs(out, "tiny_mc"), expected) < KIND_BOUND


def test_lm_eval_settings_of_a_training_config_are_checked_before_any_work(tmp_path):
    def fails_with(message: str, **settings):
        config = default_config()
        for dotted, value in settings.items():
            section, field = dotted.split("__")
            config[section][field] = value
        with pytest.raises(ConfigError, match=message):
            check_values(config)

    missing = str(tmp_path / "absent")
    fails_with(
        "lm_eval_include_path.*an existing folder",
        eval__lm_eval_tasks="a",
        eval__lm_eval_include_path=missing,
    )
    fails_with("multi-process run", eval__lm_eval_tasks="a", distributed__num_processes=2)
    fails_with(r"lm_eval_limit = -1 is invalid", eval__lm_eval_limit=-1)
