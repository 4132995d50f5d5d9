"""Workflow step: one cell of the fine-tuning grid (a target language x a method).

The cell fine-tunes a fresh copy of the model on the target's ``finetune``
documents with one method (targeted neurons, a random subset of the same size
per layer and site, full fine-tuning, LoRA, or none), saves the artefact (a
sparse delta for neuron methods), and evaluates every language afterwards.
The ``none`` cell is the before-value of every other cell.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from langneurons import corpora, finetuning
from langneurons.io import read_parquet, write_parquet_atomic
from langneurons.selection import language_set
from langneurons.steps.ablation import read_eval_documents
from langneurons.steps.common import ConfigError, load_configured_model, model_record
from langneurons.steps.evaluation import ITEM_COLUMNS, evaluation_tasks, interval_columns, run_tasks

FINETUNE_COLUMNS = (
    "method", "target_language", "eval_language", "metric", "value", "n", "chance", "trainable_params", "wall_s",
    "tokens",
)  # fmt: skip


def finetune_cell_step(
    corpus_paths: Mapping[str, str],
    neurons_path: str | None,
    model_params: Mapping[str, Any],
    model_dir: str | None,
    target_language: str,
    method: str,
    set_kind: str,
    training: Mapping[str, Any],
    control_seed: int,
    evaluation_settings: Mapping[str, Any],
    artefact_dir: str,
    table_path: str,
    items_path: str,
) -> None:
    """Fine-tune a fresh copy of the model for ``target_language`` with ``method``; evaluate every language.

    Writes the artefact, the summary table (one row per eval language and metric) and the per-item values
    behind it, from which :func:`finetune_results_step` computes intervals.
    """
    model, tokenizer = load_configured_model(model_params, model_dir)
    config = finetuning.FinetuneConfig(**dict(training))
    documents = corpora.read_corpus(corpus_paths[target_language], "finetune").sort_values("doc_id")
    if len(documents) < config.n_docs:
        raise ConfigError(
            f"finetune.n_docs={config.n_docs} but {target_language!r} has {len(documents)} finetune documents; "
            "raise corpus.split_sizes.finetune or lower finetune.n_docs"
        )
    neurons = pd.DataFrame(columns=["language", "set_kind", "layer", "site", "index"])
    if neurons_path is not None:
        neurons = language_set(read_parquet(neurons_path), target_language, set_kind)
    if neurons.empty and method in ("targeted", "random", "lora"):
        raise ConfigError(
            f"{target_language!r} has no {set_kind!r} neurons to fine-tune; lower selection.rho or change "
            "finetune.set_kind"
        )
    result = finetuning.finetune(
        model,
        documents["text"].tolist(),
        config,
        method=method,
        neurons=neurons if not neurons.empty else None,
        target_language=target_language,
        tokenizer=tokenizer,
        control_seed=control_seed,
    )
    finetuning.save_result(result, artefact_dir, extra=model_record(model_params, model_dir))
    result.model.eval()
    tasks = evaluation_tasks(tokenizer, read_eval_documents(corpus_paths, evaluation_settings["n_docs"]),
                             evaluation_settings)  # fmt: skip
    results, items = run_tasks(result.model, tokenizer, tasks)
    record = result.record
    write_parquet_atomic(items.assign(method=method, target_language=target_language)[
        ["method", "target_language", *ITEM_COLUMNS]], items_path)  # fmt: skip
    table = results.assign(
        method=method,
        target_language=target_language,
        trainable_params=record.trainable_params,
        wall_s=record.wall_s,
        tokens=record.tokens,
    )
    write_parquet_atomic(table[list(FINETUNE_COLUMNS)], table_path)


def finetune_results_step(
    table_paths: list[str], item_paths: list[str], uncertainty: Mapping[str, Any], out_path: str
) -> None:
    """All cells of the fine-tuning grid in one table, with intervals.

    Per row: ``low``/``high``, the bootstrap interval of ``value`` over its items; ``before`` (the value of
    method ``none`` for the same target, the model before fine-tuning), ``ratio_to_before`` and
    ``difference_to_before`` with paired intervals over the same items (NaN without a ``none`` cell).
    """
    table = pd.concat([read_parquet(path) for path in table_paths], ignore_index=True)
    items = pd.concat([read_parquet(path) for path in item_paths], ignore_index=True)
    groups = dict(list(items.groupby(["method", "target_language", "eval_language", "metric"], sort=False)))
    options = {"n_resamples": uncertainty["n_resamples"], "seed": uncertainty["seed"],
               "confidence": uncertainty["confidence"]}  # fmt: skip
    keys = ["target_language", "eval_language", "metric"]
    before = table[table["method"] == "none"].set_index(keys)["value"]
    table["before"] = before.reindex(pd.MultiIndex.from_frame(table[keys])).to_numpy()
    rows = []
    for _, row in table.iterrows():
        key = (row["target_language"], row["eval_language"], row["metric"])
        mine, base = groups.get((row["method"], *key)), groups.get(("none", *key))
        treated = [mine.sort_values("item")] if mine is not None else []
        before_items = base.sort_values("item") if base is not None else pd.DataFrame()
        rows.append(interval_columns(row["metric"], before_items, treated, options, reference="before"))
    write_parquet_atomic(pd.concat([table, pd.DataFrame(rows, index=table.index)], axis=1), out_path)
