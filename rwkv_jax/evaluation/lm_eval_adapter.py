"""lm-evaluation-harness model ``rwkv_jax``: any family, any checkpoint kind, state-cached scoring.

    lm-eval's simple_evaluate(model="rwkv_jax", model_args="path=MODEL,tokenizer=world,dtype=bfloat16", ...)
    python experiments/lm_eval.py --model_args path=MODEL,tokenizer=world --tasks lambada_openai

model_args: ``path`` (a ``.pth`` / ``.safetensors`` file, a Hugging Face folder or a training workdir),
``tokenizer`` (byte, world or a tokenizer.json; default the workdir's, else implied by the vocabulary),
``dtype`` (float32 or bfloat16: the compute dtype), ``wkv_impl`` (default: auto, or a workdir's own),
``step`` (of a workdir; default its newest checkpoint), ``pieces``
(``128-16-1``: see :mod:`rwkv_jax.evaluation.scoring`), ``prefix_token`` (the id that conditions an empty
context and the first token of a rolling document; default the tokenizer's end-of-document id, else 0),
``max_gen_toks`` (default for generation), ``seed``. ``batch_size`` comes from lm-eval's ``--batch_size``.
In Python, ``model=`` takes an rwkv_jax model instead of ``path`` (training uses it: :func:`task_scores`).

Requests sharing a context read it once (:func:`scoring.score_continuations`); rolling log-likelihoods
read each document once, the state carried across pieces; generation stops at ``until`` strings (single-
token ones end a row early, the text is cut at the first of them in any case).
"""

from typing import Any

from flax import nnx
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.tasks import TaskManager

from rwkv_jax.evaluation import scoring
from rwkv_jax.evaluation.loading import default_tokenizer, load_model
from rwkv_jax.tokenizers import get_tokenizer

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_TOKS = 256


def _batch_size(value: Any) -> int:
    """lm-eval's ``--batch_size`` (an int, its string, or "auto", which here means the default)."""
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH_SIZE
    return int(value)


def _pieces(value: Any) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value, 1) if value > 1 else (1,)
    return tuple(int(p) for p in str(value).split("-"))


@register_model("rwkv_jax")
class RWKVJaxLM(TemplateLM):
    """An rwkv_jax model as an lm-eval ``LM`` (see the module docstring for the arguments)."""

    def __init__(
        self,
        path: str | None = None,
        tokenizer: str | None = None,
        dtype: str = "float32",
        wkv_impl: str | None = None,
        step: int | None = None,
        batch_size: int | str | None = None,
        pieces: str | int = "-".join(map(str, scoring.DEFAULT_PIECES)),
        prefix_token: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        seed: int = 0,
        model: nnx.Module | None = None,
        **unused: Any,  # lm-eval's device, max_batch_size: JAX places the model itself
    ):
        super().__init__()
        if (path is None) == (model is None):
            raise ValueError("give the checkpoint as path=... or an rwkv_jax model as model=..., not both")
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={dtype!r}: expected float32 or bfloat16")
        recorded = None
        if model is None:
            model, recorded, _ = load_model(str(path), dtype=dtype, wkv_impl=wkv_impl, step=step)
        self.tokenizer_choice = str(tokenizer or default_tokenizer(recorded, model.config.vocab_size))
        self.rwkv_tokenizer = get_tokenizer(self.tokenizer_choice)
        self.scorer = scoring.RecurrentScorer(model, _batch_size(batch_size), _pieces(pieces))
        eos = self.rwkv_tokenizer.eos_id
        self._prefix = int(prefix_token) if prefix_token is not None else (eos if eos is not None else 0)
        self.max_gen_toks, self.seed = int(max_gen_toks), int(seed)

    @property
    def eot_token_id(self) -> int:
        return self._prefix

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.rwkv_tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.rwkv_tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list:
        pairs = [(context, continuation) for _, context, continuation in requests]
        results = scoring.score_continuations(self.scorer, pairs)
        for (strings, _, _), result in zip(requests, results, strict=True):
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        texts = [request.args[0] for request in requests]
        results = scoring.score_documents(self.scorer, [self.tok_encode(t) for t in texts], self._prefix)
        for text, result in zip(texts, results, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
        return results

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        # Requests with the same settings are generated together, in batches.
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        results = [""] * len(requests)
        for members in groups.values():
            settings = requests[members[0]].args[1]
            texts = self._generate([requests[i].args[0] for i in members], settings)
            for i, text in zip(members, texts, strict=True):
                results[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return results

    def _generate(self, contexts: list[str], settings: dict) -> list[str]:
        until = settings.get("until") or []
        until = [s for s in ([until] if isinstance(until, str) else until) if s]
        single = [ids[0] for ids in map(self.tok_encode, until) if len(ids) == 1]
        eos = [] if self.rwkv_tokenizer.eos_id is None else [self.rwkv_tokenizer.eos_id]
        sampling = settings.get("do_sample", False)
        outputs = scoring.generate_continuations(
            self.scorer,
            [self.tok_encode(c) or [self._prefix] for c in contexts],
            int(settings.get("max_gen_toks", self.max_gen_toks)),
            stop_tokens=single + eos,
            temperature=float(settings.get("temperature", 1.0)) if sampling else 0.0,
            seed=self.seed,
        )
        texts = []
        for tokens in outputs:
            text = self.tok_decode(tokens)
            for stop in until:
                text = text.split(stop)[0]
            texts.append(text)
        return texts


def task_scores(
    lm: RWKVJaxLM, tasks: list[str], include_path: str | None = None, limit: int | None = None
) -> dict[str, float]:
    """Runs lm-eval ``tasks`` (local task files in ``include_path``) on ``lm``, at most ``limit`` documents
    each; returns ``{"lm_eval/<task>/<metric>": value}`` (stderrs and non-numbers left out).

    Only the local tasks are indexed when they are all there (lm-eval's index of its own thousands of task
    files takes seconds); otherwise lm-eval's as well.
    """
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=include_path)
    out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit or None)
    scores = {}
    for task, metrics in out["results"].items():
        for key, value in metrics.items():
            metric, _, filtering = key.partition(",")
            if "stderr" in metric or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            name = metric if filtering in ("", "none") else f"{metric}_{filtering}"
            scores[f"lm_eval/{task}/{name}"] = float(value)
    return scores
