"""What the ablation and fine-tuning grids evaluate: every configured metric on every language that has its data.

The data of a job is gathered once (:func:`evaluation_tasks`: held-out documents, continuation items,
benchmark records) and then evaluated as often as the job needs (:func:`run_tasks`), e.g. once per
ablation condition on one loaded model. Each evaluation gives a summary row per (language, metric) and
the per-item values behind it, from which the aggregate steps compute bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from langneurons import evaluation
from langneurons.eval_sources import benchmark_languages

#: One row per (eval_language, metric): the value, its items, and the measured chance level (accuracy metrics).
RESULT_COLUMNS = ("eval_language", "metric", "value", "n", "chance")
#: One row per evaluated item: what a metric's value is a statistic of (``value``, or ``nll`` and ``n_tokens``).
ITEM_COLUMNS = ("eval_language", "metric", "item", "value", "nll", "n_tokens")
#: Metrics evaluated on the corpus's held-out documents; the others read a benchmark.
DOCUMENT_METRICS = ("perplexity", "continuation", "fidelity")


@dataclass(frozen=True)
class EvaluationTask:
    """One metric in one language: the data and the options :func:`langneurons.evaluation.evaluate` gets."""

    metric: str
    language: str
    data: Any
    options: Mapping[str, Any] = field(default_factory=dict)


def task_languages(metric: str, settings: Mapping[str, Any], languages: Sequence[str]) -> list[str]:
    """The languages ``metric`` is evaluated in: every language for the corpus metrics; for a benchmark, the
    configured ``languages`` (null: those of the run that the benchmark has)."""
    if metric in DOCUMENT_METRICS:
        return list(languages)
    bench = settings["benchmarks"][metric]
    wanted = bench["languages"] if bench["languages"] is not None else list(languages)
    return benchmark_languages(metric, bench["source"], bench["split"], wanted)


def _benchmark_task(metric: str, language: str, bench: Mapping[str, Any], batch_size: int) -> EvaluationTask:
    n_shots = bench.get("n_shots", 0)
    records = evaluation.load_benchmark(metric, language, bench["source"], split=bench["split"],
                                        limit=bench["n_items"] + n_shots)  # fmt: skip
    options: dict[str, Any] = {"batch_size": batch_size}
    for key in ("n_shots", "max_new_tokens", "max_prompt_tokens", "normalization"):
        if key in bench:
            options[key] = bench[key]
    return EvaluationTask(metric, language, records, options)


def evaluation_tasks(
    tokenizer, eval_docs: Mapping[str, pd.DataFrame], settings: Mapping[str, Any]
) -> list[EvaluationTask]:
    """Every (metric, language) a grid cell evaluates, with its data loaded.

    ``eval_docs``: each language's held-out documents. ``settings``: the ``evaluation`` config section
    with ``batch_size`` (execution) and ``seed``. Continuation items are built once, parallel across the
    languages, with the evaluated tokenizer (swapped distractors keep the true continuation's token count).
    """
    languages = list(eval_docs)
    batch_size = settings["batch_size"]
    documents = pd.concat(list(eval_docs.values()), ignore_index=True)
    items = None
    if "continuation" in settings["metrics"]:
        items = evaluation.build_continuation_items(
            documents, settings["n_items"], settings["seed"], distractors=settings["distractors"],
            swaps=settings["swaps"], tokenizer=tokenizer,
        )  # fmt: skip
    tasks = []
    for metric in settings["metrics"]:
        for language in task_languages(metric, settings, languages):
            if metric == "perplexity":
                options = {"max_length": settings["max_length"], "batch_size": batch_size}
                tasks.append(EvaluationTask(metric, language, eval_docs[language]["text"].tolist(), options))
            elif metric == "continuation":
                options = {"max_length": settings["max_length"], "batch_size": batch_size}
                tasks.append(EvaluationTask(metric, language, items[items["language"] == language], options))
            elif metric == "fidelity":
                fidelity = settings["fidelity"]
                options = {"languages": languages, "split": None, "limit": None, "batch_size": batch_size,
                           "prompt_tokens": fidelity["prompt_tokens"], "max_new_tokens": fidelity["max_new_tokens"]}
                tasks.append(EvaluationTask(metric, language, documents, options))  # fmt: skip
            else:
                tasks.append(_benchmark_task(metric, language, settings["benchmarks"][metric], batch_size))
    return tasks


def _items_of(metric: str, language: str, per_item: pd.DataFrame) -> pd.DataFrame:
    columns = {column: per_item[column] if column in per_item else np.nan for column in ("value", "nll", "n_tokens")}
    return pd.DataFrame({"eval_language": language, "metric": metric, "item": per_item["item"].to_numpy(),
                         **{k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}})  # fmt: skip


def run_tasks(model, tokenizer, tasks: Sequence[EvaluationTask]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate every task on ``model`` as it is (wrap the call in ``deactivate`` for an ablation).

    Returns the summary (:data:`RESULT_COLUMNS`) and the per-item values (:data:`ITEM_COLUMNS`).
    """
    rows, items = [], []
    for task in tasks:
        result = evaluation.evaluate(model, tokenizer, task.metric, task.data, task.language, progress=False,
                                     **task.options)  # fmt: skip
        rows.append({"eval_language": task.language, "metric": task.metric, "value": result["value"],
                     "n": result["n"], "chance": result.get("chance", np.nan)})  # fmt: skip
        items.append(_items_of(task.metric, task.language, result["per_item"]))
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS)), pd.concat(items, ignore_index=True)


def empty_results(tasks: Sequence[EvaluationTask]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tables of an evaluation that did not happen (nothing to deactivate): NaN values, no items."""
    rows = [{"eval_language": t.language, "metric": t.metric, "value": np.nan, "n": 0, "chance": np.nan}
            for t in tasks]  # fmt: skip
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS)), pd.DataFrame(columns=list(ITEM_COLUMNS))


def interval_columns(
    metric: str,
    baseline: pd.DataFrame,
    treated: Sequence[pd.DataFrame],
    options: Mapping[str, Any],
    reference: str = "baseline",
) -> dict[str, float]:
    """Interval columns of a grid row: ``low``/``high`` of the (first) treated value over its items, and its
    change from ``baseline`` (``ratio_to_<reference>``, ``difference_to_<reference>`` with their ``_low``/``_high``),
    paired over the same items and, with several treated tables (control seeds), over them too. NaN where the
    items are missing. ``options``: n_resamples, seed, confidence."""
    out = dict.fromkeys(("low", "high", f"ratio_to_{reference}", "ratio_low", "ratio_high",
                         f"difference_to_{reference}", "difference_low", "difference_high"), float("nan"))  # fmt: skip
    if not treated:
        return out
    interval = evaluation.metric_interval(metric, treated[0], **options)
    out.update(low=interval.low, high=interval.high)
    if len(baseline):
        change = evaluation.paired_metric_changes(metric, baseline, treated, **options)
        out.update({f"ratio_to_{reference}": change.ratio.estimate, "ratio_low": change.ratio.low,
                    "ratio_high": change.ratio.high, f"difference_to_{reference}": change.difference.estimate,
                    "difference_low": change.difference.low, "difference_high": change.difference.high})  # fmt: skip
    return out
