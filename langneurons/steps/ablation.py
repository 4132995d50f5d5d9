"""Workflow steps: one cell of the ablation grid (MWork), and the grid's aggregate table.

A cell deactivates one language's neuron set (or a random control of the same
size per layer and site) in one condition (a layer stage and a structure) and
evaluates every language. The baseline cell deactivates nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from langneurons import corpora, evaluation
from langneurons.architectures import dimensions, site_sizes
from langneurons.interventions import condition_neurons, deactivate, layer_stages
from langneurons.io import provenance, read_parquet, write_json_atomic, write_parquet_atomic
from langneurons.selection import language_set, random_control
from langneurons.steps.common import ConfigError, load_configured_model, model_record

GRID_COLUMNS = (
    "condition", "detector", "set_kind", "target_language", "control", "seed",
    "eval_language", "metric", "value", "n", "n_neurons_deactivated",
)  # fmt: skip
BASELINE = "none"
logger = logging.getLogger(__name__)


def cell_neurons(
    neurons: pd.DataFrame,
    target_language: str,
    set_kind: str,
    condition: str,
    stages: list[str],
    site_sizes: Mapping[str, int],
    control_seed: int | None,
) -> pd.DataFrame:
    """The neurons a cell deactivates: the target's set in the condition, or its random control.

    A set that exists but has no neurons in the condition (LAPE's FFN-only sets
    in the attention stage, say) gives an empty table: a finding, not an error.
    """
    chosen = language_set(neurons, target_language, set_kind)
    if chosen.empty:
        known = sorted(neurons.loc[neurons["set_kind"] == set_kind, "language"].unique())
        fix = (
            "raise selection.lape.entropy_quantile, or remove the target or 'lape' from ablation.detectors"
            if set_kind == "lape"
            else "lower selection.rho / choose another set kind"
        )
        raise ConfigError(
            f"ablation target {target_language!r} has no {set_kind!r} neurons (languages with such neurons: "
            f"{known}); check ablation.targets against `languages`, or {fix}"
        )
    chosen = condition_neurons(chosen, condition, stages)
    if chosen.empty:
        return chosen
    if control_seed is not None:
        chosen = random_control(chosen, dict(site_sizes), len(stages), control_seed)
    return chosen


def evaluate_languages(
    model, tokenizer, eval_docs: Mapping[str, pd.DataFrame], metrics: Sequence[str], settings: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Every metric on every language's held-out documents: tidy rows, and the per-item table behind them
    (``eval_language``, ``metric``, ``item`` and the metric's item columns) for paired bootstrap intervals."""
    rows, per_item = [], []
    items = None
    if "continuation" in metrics:
        frames = pd.concat(list(eval_docs.values()), ignore_index=True)
        items = evaluation.build_continuation_items(
            frames, settings["n_items"], settings["seed"], distractors=settings["distractors"], swaps=settings["swaps"],
            tokenizer=tokenizer,
        )
    for language, docs in eval_docs.items():
        for metric in metrics:
            if metric == "perplexity":
                data = docs["text"].tolist()
                options = {"max_length": settings["max_length"], "batch_size": settings["batch_size"]}
            elif metric == "continuation":
                data = items[items["language"] == language]
                options = {"max_length": settings["max_length"], "batch_size": settings["batch_size"]}
            else:
                raise ConfigError(f"ablation.metrics has {metric!r}; the grid supports perplexity and continuation")
            result = evaluation.evaluate(model, tokenizer, metric, data, language, progress=False, **options)
            rows.append({"eval_language": language, "metric": metric, "value": result["value"], "n": result["n"]})
            per_item.append(result["per_item"].assign(eval_language=language, metric=metric))
    table = pd.concat(per_item, ignore_index=True)
    return rows, table[["eval_language", "metric", *(c for c in table.columns if c not in ("eval_language", "metric"))]]


def ablation_cell_step(
    corpus_paths: Mapping[str, str],
    neurons_path: str | None,
    model_params: Mapping[str, Any],
    model_dir: str | None,
    cell: Mapping[str, Any],
    stages: Mapping[str, int | None],
    settings: Mapping[str, Any],
    out_path: str,
    record_path: str,
    per_item_path: str | None = None,
) -> None:
    """Evaluate every language with one cell's neurons deactivated (none for the baseline).

    ``per_item_path`` (optional) receives the per-document (per-item) table of every metric, so that the
    ratio to the baseline gets a paired bootstrap interval over the same documents."""
    if cell["condition"] != BASELINE and (cell["detector"] == "lape") != (cell["set_kind"] == "lape"):
        raise ConfigError(
            f"ablation cell with detector {cell['detector']!r} and set kind {cell['set_kind']!r}: LAPE's sets have "
            "set kind 'lape' and PLND's are activated/specific/exclusive"
        )
    model, tokenizer = load_configured_model(model_params, model_dir)
    eval_docs = {
        lang: corpora.read_corpus(path, "eval").sort_values("doc_id").head(settings["n_docs"])
        for lang, path in corpus_paths.items()
    }
    empty = [lang for lang, docs in eval_docs.items() if docs.empty]
    if empty:
        raise ConfigError(f"no eval documents for {empty}: raise corpus.split_sizes.eval")
    n_layers = dimensions(model).n_layers  # the text model's, also when the config nests it (multimodal Gemma-3)
    neurons = pd.DataFrame(columns=["layer", "site", "index"])
    if cell["condition"] != BASELINE:
        neurons = cell_neurons(
            read_parquet(neurons_path),
            cell["target_language"],
            cell["set_kind"],
            cell["condition"],
            layer_stages(n_layers, **stages),
            site_sizes(model),
            cell["control_seed"],
        )
    if cell["condition"] != BASELINE and neurons.empty:
        logger.warning(
            "the %r set of %r has no neurons in condition %r: the cell holds NaN",
            cell["set_kind"], cell["target_language"], cell["condition"],
        )  # fmt: skip
        rows = [
            {"eval_language": lang, "metric": metric, "value": float("nan"), "n": 0}
            for lang in eval_docs
            for metric in settings["metrics"]
        ]
        per_item = pd.DataFrame(columns=["eval_language", "metric", "item"])
    else:
        with deactivate(model, neurons):
            rows, per_item = evaluate_languages(model, tokenizer, eval_docs, settings["metrics"], settings)
    table = pd.DataFrame(rows).assign(
        condition=cell["condition"],
        detector=cell["detector"],
        set_kind=cell["set_kind"],
        target_language=cell["target_language"],
        control="real" if cell["control_seed"] is None else "random",
        seed=-1 if cell["control_seed"] is None else int(cell["control_seed"]),
        n_neurons_deactivated=len(neurons),
    )
    write_parquet_atomic(table[list(GRID_COLUMNS)], out_path)
    if per_item_path is not None:
        write_parquet_atomic(per_item, per_item_path)
    write_json_atomic(
        provenance({"cell": dict(cell), "stages": dict(stages), "settings": dict(settings)},
                   **model_record(model_params, model_dir)),
        record_path,
    )


def ablation_grid_step(cell_paths: Sequence[str], out_path: str) -> None:
    """Concatenate the cells, with each metric's ratio to the baseline beside its value."""
    table = pd.concat([read_parquet(path) for path in cell_paths], ignore_index=True)
    baseline = table[table["condition"] == BASELINE].set_index(["eval_language", "metric"])["value"]
    if baseline.empty:
        raise ConfigError("the ablation grid has no baseline cell (condition 'none')")
    keys = pd.MultiIndex.from_frame(table[["eval_language", "metric"]])
    table["baseline"] = baseline.reindex(keys).to_numpy()
    table["ratio_to_baseline"] = table["value"] / table["baseline"]
    write_parquet_atomic(table, out_path)
