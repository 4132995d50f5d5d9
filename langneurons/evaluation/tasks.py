"""The paper's benchmarks as metrics, and :func:`evaluate`: one entry point for every metric."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from langneurons.batching import encode, special_prefix
from langneurons.evaluation.benchmarks import _benchmark_records, load_documents
from langneurons.evaluation.common import (
    EvaluationError,
    MissingDataError,
    _check_texts,
    _model_max_length,
    _select_docs,
    normalize_language,
)
from langneurons.evaluation.generation import _doc_prompts, fidelity, greedy_generate
from langneurons.evaluation.items import build_continuation_items, continuation
from langneurons.evaluation.metrics import exact_match, extract_number, numbers_match, rouge_l, token_f1
from langneurons.evaluation.scoring import PerplexityResult, document_nll, multiple_choice
from langneurons.evaluation.uncertainty import (
    Interval,
    PairedChange,
    Statistic,
    bootstrap_interval,
    mean_statistic,
    paired_change_intervals,
    perplexity_statistic,
)


def _fit_prompt(tokenizer, template: str, body_field: str, fields: Mapping[str, str], max_tokens: int) -> list[int]:
    """Prompt ids of ``template.format(**fields)``, shortening ``fields[body_field]`` from its end to fit.

    The body (an article, a passage) is what may be cut; the instruction and
    the question around it are kept whole. A final guard keeps the last
    ``max_tokens`` tokens in case re-tokenisation at the cut grew the prompt.
    """
    ids = encode(tokenizer, [template.format(**fields)], specials="prefix")[0]  # in full: how much must go
    if len(ids) <= max_tokens:
        return ids
    body_ids = encode(tokenizer, [fields[body_field]], specials="none")[0]
    keep = max(0, len(body_ids) - (len(ids) - max_tokens) - 8)
    shortened = dict(fields, **{body_field: tokenizer.decode(body_ids[:keep], skip_special_tokens=True)})
    n_prefix = len(special_prefix(tokenizer))
    room = max(1, max_tokens - n_prefix)
    return encode(tokenizer, [template.format(**shortened)], n_prefix + room, specials="prefix", keep="end")[0]


def _max_prompt_tokens(model: torch.nn.Module, max_new_tokens: int, max_prompt_tokens: int | None) -> int:
    limit = max(1, _model_max_length(model) - max_new_tokens)
    return limit if max_prompt_tokens is None else min(max_prompt_tokens, limit)


MGSM_TEMPLATE = "Question: {question}\nAnswer:"
MGSM_STOP = ("\n\n", "Question:")


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def mgsm(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping],
    language: str,
    *,
    n_shots: int = 0,
    template: str = MGSM_TEMPLATE,
    max_new_tokens: int = 48,
    stop: Sequence[str] = MGSM_STOP,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """MGSM exact match: the final number of the greedy answer equals the reference number.

    ``n_shots`` > 0 uses the first ``n_shots`` records as worked examples
    (``template`` followed by `` <answer>``) and evaluates the rest.
    """
    if n_shots < 0 or n_shots >= len(records):
        raise EvaluationError(f"n_shots={n_shots} must be in [0, {len(records) - 1}] for {len(records)} records")
    shots = "".join(template.format(question=r["question"]) + f" {_format_number(r['answer'])}\n\n"
                    for r in records[:n_shots])
    evaluated = list(records[n_shots:])
    prompts = [shots + template.format(question=r["question"]) for r in evaluated]
    outputs = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              stop=stop, progress=progress)
    predicted = [extract_number(text, language) for text in outputs]
    hits = np.array([numbers_match(p, r["answer"]) for p, r in zip(predicted, evaluated)], dtype=np.float64)
    return {
        "value": float(hits.mean()),
        "n": len(hits),
        "per_item": pd.DataFrame({"item": np.arange(len(hits)), "value": hits}),
        "n_no_number": sum(p is None for p in predicted),
        "details": [{"item": i, "generation": t, "predicted": p, "answer": r["answer"]}
                    for i, (t, p, r) in enumerate(zip(outputs, predicted, evaluated))],
    }


def _generate_from_template(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping],
    template: str,
    long_field: str,
    max_new_tokens: int,
    max_prompt_tokens: int | None,
    stop: Sequence[str],
    batch_size: int,
    progress: bool,
) -> list[str]:
    """Greedy continuations of ``template`` filled from each record, ``long_field`` cut to fit the context."""
    budget = _max_prompt_tokens(model, max_new_tokens, max_prompt_tokens)
    prompts = [_fit_prompt(tokenizer, template, long_field, r, budget) for r in records]
    return greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           stop=stop, progress=progress)  # fmt: skip


XQUAD_TEMPLATE = "{context}\n\nQuestion: {question}\nAnswer:"


def xquad(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping],
    language: str,
    *,
    template: str = XQUAD_TEMPLATE,
    max_new_tokens: int = 32,
    max_prompt_tokens: int | None = None,
    stop: Sequence[str] = ("\n",),
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Generative XQuAD: mean SQuAD F1 (character level for zh/ja/th) of greedy answers; also exact match."""
    outputs = _generate_from_template(model, tokenizer, records, template, "context", max_new_tokens,
                                      max_prompt_tokens, stop, batch_size, progress)  # fmt: skip
    f1 = [token_f1(text, r["answers"], language) for text, r in zip(outputs, records)]
    em = [exact_match(text, r["answers"], language) for text, r in zip(outputs, records)]
    return {
        "value": float(np.mean(f1)),
        "n": len(f1),
        "exact_match": float(np.mean(em)),
        "per_item": pd.DataFrame({"item": np.arange(len(f1)), "value": f1, "exact_match": em}),
        "details": [{"item": i, "generation": t, "f1": s, "answers": r["answers"]}
                    for i, (t, s, r) in enumerate(zip(outputs, f1, records))],
    }


#: XCOPA's connectors, as lm-evaluation-harness phrases them: premise + connector + choice.
XCOPA_CONNECTORS: dict[str, dict[str, str]] = {
    "en": {"cause": "because", "effect": "therefore"},
    "et": {"cause": "sest", "effect": "seetõttu"},
    "ht": {"cause": "poukisa", "effect": "donk sa"},
    "it": {"cause": "perché", "effect": "quindi"},
    "id": {"cause": "karena", "effect": "maka"},
    "qu": {"cause": "imataq", "effect": "chaymi"},
    "sw": {"cause": "kwa sababu", "effect": "kwa hiyo"},
    "zh": {"cause": "因为", "effect": "所以"},
    "ta": {"cause": "காரணமாக", "effect": "எனவே"},
    "th": {"cause": "เพราะ", "effect": "ดังนั้น"},
    "tr": {"cause": "çünkü", "effect": "bu yüzden"},
    "vi": {"cause": "bởi vì", "effect": "vì vậy"},
}
_NO_SPACE = frozenset({"zh", "ja"})


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def xcopa_item(record: Mapping, language: str, connectors: Mapping[str, str]) -> tuple[str, list[str]]:
    """(context, choices): "premise<sep>connector", "<sep>choice" with the choice's first letter lower-cased."""
    sep = "" if normalize_language(language) in _NO_SPACE else " "
    premise = record["premise"].strip().rstrip(".。!！")
    context = f"{premise}{sep}{connectors[record['question']]}"
    return context, [sep + _lower_first(record[k].strip()) for k in ("choice1", "choice2")]


def xcopa(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping],
    language: str,
    *,
    connectors: Mapping[str, str] | None = None,
    normalization: str = "sum",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """XCOPA accuracy: the more likely of the two choices after "premise because/therefore"."""
    language = normalize_language(language)
    if connectors is None:
        if language not in XCOPA_CONNECTORS:
            raise EvaluationError(
                f"xcopa has no connector words for language {language!r} (known: {', '.join(XCOPA_CONNECTORS)}); "
                "pass connectors={'cause': ..., 'effect': ...}"
            )
        connectors = XCOPA_CONNECTORS[language]
    pairs = [xcopa_item(r, language, connectors) for r in records]
    contexts, choices = [c for c, _ in pairs], [o for _, o in pairs]
    return multiple_choice(model, tokenizer, contexts, choices, [r["label"] for r in records],
                           normalization=normalization, batch_size=batch_size, progress=progress)


XCSQA_TEMPLATE = "Question: {stem}\nAnswer:"


def xcsqa(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping],
    language: str,
    *,
    template: str = XCSQA_TEMPLATE,
    normalization: str = "sum",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """X-CSQA accuracy: the most likely of the five answer choices after the question."""
    contexts = [template.format(stem=r["stem"]) for r in records]
    choices = [[" " + c for c in r["choices"]] for r in records]
    return multiple_choice(model, tokenizer, contexts, choices, [r["label"] for r in records],
                           normalization=normalization, batch_size=batch_size, progress=progress)


XLSUM_TEMPLATE = "Article: {text}\nSummary:"


def xlsum(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping],
    language: str,
    *,
    template: str = XLSUM_TEMPLATE,
    max_new_tokens: int = 64,
    max_prompt_tokens: int | None = None,
    stop: Sequence[str] = ("\n",),
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """XLSum: mean ROUGE-L F between the greedy summary and the reference (see :func:`rouge_tokens`)."""
    outputs = _generate_from_template(model, tokenizer, records, template, "text", max_new_tokens,
                                      max_prompt_tokens, stop, batch_size, progress)  # fmt: skip
    scores = [rouge_l(text, r["summary"], language) for text, r in zip(outputs, records)]
    return {
        "value": float(np.mean([s.fmeasure for s in scores])),
        "n": len(scores),
        "rouge_l_precision": float(np.mean([s.precision for s in scores])),
        "rouge_l_recall": float(np.mean([s.recall for s in scores])),
        "per_item": pd.DataFrame({
            "item": np.arange(len(scores)),
            "value": [s.fmeasure for s in scores],
            "precision": [s.precision for s in scores],
            "recall": [s.recall for s in scores],
        }),
        "details": [
            {"item": i, "generation": t, "rouge_l": s.fmeasure} for i, (t, s) in enumerate(zip(outputs, scores))
        ],
    }


# --------------------------------------------------------------------------
# 5. The dispatcher
# --------------------------------------------------------------------------


def _missing(metric: str, language: str, needs: str, fix: str) -> MissingDataError:
    return MissingDataError(f"metric {metric!r} (language {language!r}) needs {needs}, but data is None. Fix: {fix}")


def _docs_of(data: Any, metric: str, language: str, split: str | None) -> pd.DataFrame | list[str]:
    """A corpus table (from a DataFrame or a document file) or a plain list of texts."""
    if data is None:
        raise _missing(metric, language, "held-out documents (a corpus table with columns language, text, split)",
                       "pass data=langneurons.corpora.read_corpus(<parquet>, splits='eval') or a document file path")
    if isinstance(data, (str, Path)):
        data = load_documents(data, language)
    if isinstance(data, pd.DataFrame):
        return _select_docs(data, split, f"{metric} data")
    return _check_texts(data, f"{metric} data")


def _run_perplexity(model, tokenizer, data, language, *, split: str | None = "eval", limit: int | None = None,
                    max_length: int | None = 512, batch_size: int = 8, padding_side: str = "right",
                    progress: bool = True) -> dict[str, Any]:
    docs = _docs_of(data, "perplexity", language, split)
    if isinstance(docs, pd.DataFrame):
        mine = docs[docs["language"] == normalize_language(language)]
        if mine.empty:
            raise EvaluationError(f"perplexity data has no documents of language {language!r}; "
                                  f"it has {sorted(set(docs['language']))}")
        texts = mine["text"].tolist()
    else:
        texts = docs
    texts = texts[:limit] if limit is not None else texts
    documents = document_nll(model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
                             padding_side=padding_side, progress=progress)
    result = PerplexityResult.of_documents(documents)
    return {"value": result.perplexity, "n": result.n_docs, "n_tokens": result.n_tokens,
            "nll_sum": result.nll_sum, "mean_nll": result.mean_nll, "per_item": documents}


def _run_continuation(model, tokenizer, data, language, *, split: str | None = "eval", n_items: int = 100,
                      seed: int = 0, n_choices: int = 4, context_sentences: int = 3, continuation_sentences: int = 2,
                      distractors: str = "documents", swaps: int = 2, normalization: str = "sum",
                      max_length: int | None = 512, batch_size: int = 8, padding_side: str = "right",
                      progress: bool = True) -> dict[str, Any]:
    if data is None:
        raise _missing("continuation", language,
                       "held-out aligned documents of every language (or items from build_continuation_items)",
                       "pass data=read_corpus(<parquet>) of all the experiment's languages, so that the items are "
                       "parallel across them")
    if isinstance(data, (str, Path)):
        data = load_documents(data, language)
    if not isinstance(data, pd.DataFrame):
        raise EvaluationError("continuation data must be a corpus table or an items table (build_continuation_items)")
    items = data if "choices" in data.columns else build_continuation_items(
        data, n_items, seed, n_choices, context_sentences=context_sentences,
        continuation_sentences=continuation_sentences, split=split, distractors=distractors, swaps=swaps,
        tokenizer=tokenizer,
    )
    return continuation(model, tokenizer, items, language, normalization=normalization, max_length=max_length,
                        batch_size=batch_size, padding_side=padding_side, progress=progress)


def _run_fidelity(model, tokenizer, data, language, *, languages: Sequence[str] | None = None,
                  split: str | None = "eval", limit: int | None = 100, prompt_tokens: int = 32,
                  max_new_tokens: int = 32, batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    docs = _docs_of(data, "fidelity", language, split)
    if isinstance(docs, pd.DataFrame):
        prompts: list = _doc_prompts(tokenizer, docs, language, prompt_tokens, limit)
        if languages is None:
            languages = sorted(set(docs["language"]))
    else:
        prompts = docs[:limit] if limit is not None else docs
    return fidelity(model, tokenizer, prompts, language, languages=languages, max_new_tokens=max_new_tokens,
                    batch_size=batch_size, progress=progress)


def _benchmark_runner(name: str, function: Callable) -> Callable:
    def run(model, tokenizer, data, language, *, split: str | None = None, limit: int | None = None, **options):
        records = _benchmark_records(name, data, language, split, limit)
        return function(model, tokenizer, records, language, **options)

    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*list(inspect.signature(run).parameters.values())[:4],
         inspect.Parameter("split", inspect.Parameter.KEYWORD_ONLY, default=None),
         inspect.Parameter("limit", inspect.Parameter.KEYWORD_ONLY, default=None),
         *[p for p in list(inspect.signature(function).parameters.values())[4:]]]
    )
    return run


@dataclass(frozen=True)
class Metric:
    """One entry of :data:`METRICS`: a runner ``(model, tokenizer, data, language, **options) -> dict``.

    A result's ``value`` is ``statistic`` of the ``columns`` of its
    ``per_item`` table (one row per document or item), which is what
    :func:`metric_interval` resamples. ``chance``: the result carries its
    measured chance level (multiple choice).
    """

    run: Callable[..., dict[str, Any]]
    data: str
    statistic: Statistic = mean_statistic
    columns: tuple[str, ...] = ("value",)
    chance: bool = False

    def options(self) -> list[str]:
        return [p.name for p in list(inspect.signature(self.run).parameters.values())[4:]]


METRICS: dict[str, Metric] = {
    "perplexity": Metric(_run_perplexity, "corpus table (split eval) or document file or list of texts",
                         perplexity_statistic, ("nll", "n_tokens")),
    "continuation": Metric(_run_continuation, "aligned corpus table of all languages, or continuation items",
                           chance=True),
    "fidelity": Metric(_run_fidelity, "corpus table (split eval) or document file or list of prompts"),
    "mgsm": Metric(_benchmark_runner("mgsm", mgsm), "None (hub juletxara/mgsm), TSV question<TAB>answer, or records"),
    "xquad": Metric(_benchmark_runner("xquad", xquad), "None (hub google/xquad), SQuAD JSON/JSONL, or records"),
    "xcopa": Metric(_benchmark_runner("xcopa", xcopa), "None (hub cambridgeltl/xcopa), JSONL, or records",
                    chance=True),
    "xcsqa": Metric(_benchmark_runner("xcsqa", xcsqa), "None (hub INK-USC/xcsr), X-CSR JSONL, or records",
                    chance=True),
    "xlsum": Metric(_benchmark_runner("xlsum", xlsum), "None (hub csebuetnlp/xlsum), JSONL text/summary, or records"),
}


def _item_values(metric: str, per_item: pd.DataFrame, what: str) -> np.ndarray:
    if metric not in METRICS:
        raise EvaluationError(f"metric {metric!r} is unknown; use one of {', '.join(METRICS)}")
    columns = list(METRICS[metric].columns)
    missing = sorted(set(columns) - set(per_item.columns))
    if missing:
        raise EvaluationError(
            f"{what} lacks column(s) {missing} of metric {metric!r}; pass the 'per_item' table of its result"
        )
    return per_item[columns].to_numpy(dtype=np.float64)


def metric_interval(
    metric: str, per_item: pd.DataFrame, *, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> Interval:
    """Bootstrap interval of ``metric``'s value over the documents or items of its ``per_item`` table."""
    values = _item_values(metric, per_item, "per_item")
    return bootstrap_interval(values, METRICS[metric].statistic, n_resamples=n_resamples, seed=seed,
                              confidence=confidence)  # fmt: skip


def _check_same_items(baseline: pd.DataFrame, treated: pd.DataFrame) -> None:
    if "item" not in baseline.columns or "item" not in treated.columns:
        raise EvaluationError("baseline and treated need an 'item' column; pass the 'per_item' tables of two results")
    if baseline["item"].tolist() != treated["item"].tolist():
        raise EvaluationError(
            f"baseline ({len(baseline)} items) and treated ({len(treated)} items) do not hold the same items in the "
            "same order; evaluate both on the same data"
        )


def paired_metric_changes(
    metric: str,
    baseline: pd.DataFrame,
    treated: Sequence[pd.DataFrame],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedChange:
    """Bootstrap intervals of ``metric``'s change from ``baseline`` to ``treated`` (ratio and difference).

    ``treated`` holds one ``per_item`` table per replicate (e.g. per random-control seed), each of the same
    items as ``baseline`` in the same order (:func:`paired_change_intervals`).
    """
    for table in treated:
        _check_same_items(baseline, table)
    return paired_change_intervals(
        _item_values(metric, baseline, "baseline"), [_item_values(metric, t, "treated") for t in treated],
        METRICS[metric].statistic, n_resamples=n_resamples, seed=seed, confidence=confidence,
    )  # fmt: skip


def paired_metric_interval(
    metric: str,
    baseline: pd.DataFrame,
    treated: pd.DataFrame,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Bootstrap interval of ``metric``'s ratio treated/baseline (e.g. ablated/baseline) over the same items.

    ``baseline`` and ``treated`` are ``per_item`` tables of the same data
    evaluated twice; their ``item`` columns must agree row by row.
    """
    return paired_metric_changes(metric, baseline, [treated], n_resamples=n_resamples, seed=seed,
                                 confidence=confidence).ratio  # fmt: skip


def evaluate(
    model: torch.nn.Module, tokenizer, metric: str, data: Any, language: str, **options: Any
) -> dict[str, Any]:
    """Run ``metric`` for ``language``; returns ``{metric, language, value, n, <extras>, per_item, details}``.

    Wrap the call in ``with deactivate(model, neurons):`` to evaluate an
    ablation. ``value`` is the headline number (perplexity; otherwise a
    fraction in [0, 1]); ``per_item`` is a table with one row per document
    or item (``item``, and the columns ``value`` follows from, see
    :class:`Metric`) for bootstrap intervals (:func:`metric_interval`);
    multiple-choice metrics also give their measured ``chance``.
    ``details`` holds per-item outputs (texts, predictions). Both are
    dropped by :func:`results_table`.
    """
    if metric not in METRICS:
        raise EvaluationError(f"metric {metric!r} is unknown; use one of {', '.join(METRICS)}")
    language = normalize_language(language)
    entry = METRICS[metric]
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise EvaluationError(f"metric {metric!r} has no option(s) {unknown}; its options are {entry.options()}")
    result = entry.run(model, tokenizer, data, language, **options)
    details = result.pop("details", None)
    return {"metric": metric, "language": language, **result, "details": details}


def results_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Tidy table of results: one row per result, its scalar fields as columns (``details`` dropped)."""
    rows = [{k: v for k, v in r.items() if k != "details" and (v is None or np.isscalar(v))} for r in results]
    frame = pd.DataFrame(rows)
    first = [c for c in ("metric", "language", "value", "n") if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]
