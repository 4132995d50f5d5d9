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
from langneurons.steps.ablation import evaluate_languages
from langneurons.steps.common import ConfigError, load_configured_model, model_record

FINETUNE_COLUMNS = (
    "method", "target_language", "eval_language", "metric", "value", "n", "trainable_params", "wall_s", "tokens",
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
) -> None:
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
    eval_docs = {
        lang: corpora.read_corpus(path, "eval").sort_values("doc_id").head(evaluation_settings["n_docs"])
        for lang, path in corpus_paths.items()
    }
    rows = evaluate_languages(result.model, tokenizer, eval_docs, evaluation_settings["metrics"], evaluation_settings)
    record = result.record
    table = pd.DataFrame(rows).assign(
        method=method,
        target_language=target_language,
        trainable_params=record.trainable_params,
        wall_s=record.wall_s,
        tokens=record.tokens,
    )
    write_parquet_atomic(table[list(FINETUNE_COLUMNS)], table_path)


def finetune_results_step(table_paths: list[str], out_path: str) -> None:
    """All cells of the fine-tuning grid in one table."""
    write_parquet_atomic(pd.concat([read_parquet(path) for path in table_paths], ignore_index=True), out_path)
