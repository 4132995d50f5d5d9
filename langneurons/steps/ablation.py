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

from langneurons import corpora
from langneurons.architectures import dimensions, site_sizes
from langneurons.interventions import condition_neurons, deactivate, layer_stages
from langneurons.io import provenance, read_parquet, write_json_atomic, write_parquet_atomic
from langneurons.neuronset import NeuronSet, NeuronSpace
from langneurons.selection import language_set
from langneurons.steps.common import ConfigError, load_configured_model, model_record
from langneurons.steps.evaluation import ITEM_COLUMNS, empty_results, evaluation_tasks, interval_columns, run_tasks

#: What identifies a cell.
CELL_KEYS = ("condition", "detector", "set_kind", "target_language", "control", "seed")
#: A random control's change averaged over its seeds, with its interval over the items and the seeds.
SEEDS_COLUMNS = {
    "seeds_ratio": "ratio_to_baseline", "seeds_ratio_low": "ratio_low", "seeds_ratio_high": "ratio_high",
    "seeds_difference": "difference_to_baseline", "seeds_difference_low": "difference_low",
    "seeds_difference_high": "difference_high",
}  # fmt: skip
GRID_COLUMNS = (*CELL_KEYS, "eval_language", "metric", "value", "n", "chance", "n_neurons_deactivated")
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
        chosen = NeuronSet(chosen, NeuronSpace(len(stages), site_sizes)).random_control(control_seed).table
    return chosen


def _check_cell(cell: Mapping[str, Any]) -> None:
    if cell["condition"] != BASELINE and (cell["detector"] == "lape") != (cell["set_kind"] == "lape"):
        raise ConfigError(
            f"ablation cell with detector {cell['detector']!r} and set kind {cell['set_kind']!r}: LAPE's sets have "
            "set kind 'lape' and PLND's are activated/specific/exclusive"
        )


def read_eval_documents(corpus_paths: Mapping[str, str], n_docs: int) -> dict[str, pd.DataFrame]:
    """Each language's first ``n_docs`` held-out documents (by doc_id)."""
    eval_docs = {lang: corpora.read_corpus(path, "eval").sort_values("doc_id").head(n_docs)
                 for lang, path in corpus_paths.items()}  # fmt: skip
    empty = [lang for lang, docs in eval_docs.items() if docs.empty]
    if empty:
        raise ConfigError(f"no eval documents for {empty}: raise corpus.split_sizes.eval")
    return eval_docs


def ablation_cells_step(
    corpus_paths: Mapping[str, str],
    neurons_path: str | None,
    model_params: Mapping[str, Any],
    model_dir: str | None,
    cells: Sequence[Mapping[str, Any]],
    stages: Mapping[str, int | None],
    settings: Mapping[str, Any],
    outputs: Sequence[Mapping[str, str]],
) -> None:
    """Evaluate every language once per cell, all on one loaded model, each cell's neurons deactivated by hooks.

    ``cells[i]`` (condition, detector, set_kind, target_language, control_seed) writes ``outputs[i]``: its
    summary table (``cell``), its per-item values (``items``) and its provenance (``record``). The evaluation
    data is gathered once; the hooks of one cell are removed before the next cell's are placed.
    """
    if len(cells) != len(outputs):
        raise ValueError(f"{len(cells)} cells but {len(outputs)} outputs")
    for cell in cells:
        _check_cell(cell)
    model, tokenizer = load_configured_model(model_params, model_dir)
    tasks = evaluation_tasks(tokenizer, read_eval_documents(corpus_paths, settings["n_docs"]), settings)
    n_layers = dimensions(model).n_layers  # the text model's, also when the config nests it (multimodal Gemma-3)
    neurons_table = read_parquet(neurons_path) if any(c["condition"] != BASELINE for c in cells) else None
    for cell, out in zip(cells, outputs):
        neurons = pd.DataFrame(columns=["layer", "site", "index"])
        if cell["condition"] != BASELINE:
            neurons = cell_neurons(
                neurons_table,
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
            results, items = empty_results(tasks)
        else:
            with deactivate(model, neurons):
                results, items = run_tasks(model, tokenizer, tasks)
        keys = {
            "condition": cell["condition"],
            "detector": cell["detector"],
            "set_kind": cell["set_kind"],
            "target_language": cell["target_language"],
            "control": "real" if cell["control_seed"] is None else "random",
            "seed": -1 if cell["control_seed"] is None else int(cell["control_seed"]),
        }
        write_parquet_atomic(results.assign(**keys, n_neurons_deactivated=len(neurons))[list(GRID_COLUMNS)],
                             out["cell"])  # fmt: skip
        write_parquet_atomic(items.assign(**keys)[[*CELL_KEYS, *ITEM_COLUMNS]], out["items"])
        write_json_atomic(
            provenance({"cell": dict(cell), "stages": dict(stages), "settings": dict(settings)},
                       **model_record(model_params, model_dir)),
            out["record"],
        )  # fmt: skip


def ablation_cell_step(
    corpus_paths: Mapping[str, str],
    neurons_path: str | None,
    model_params: Mapping[str, Any],
    model_dir: str | None,
    cell: Mapping[str, Any],
    stages: Mapping[str, int | None],
    settings: Mapping[str, Any],
    out_path: str,
    items_path: str,
    record_path: str,
) -> None:
    """One cell on its own model (:func:`ablation_cells_step` with one cell)."""
    ablation_cells_step(corpus_paths, neurons_path, model_params, model_dir, [cell], stages, settings,
                        [{"cell": out_path, "items": items_path, "record": record_path}])  # fmt: skip


def _metric_items(items: pd.DataFrame, language: str, metric: str) -> pd.DataFrame:
    return items[(items["eval_language"] == language) & (items["metric"] == metric)].sort_values("item")


def ablation_grid_step(
    cell_paths: Sequence[str], item_paths: Sequence[str], uncertainty: Mapping[str, Any], out_path: str
) -> None:
    """Concatenate the cells, with intervals, and each value's ratio and difference to the baseline.

    Per row: ``low``/``high``, the bootstrap interval of ``value`` over its items; ``ratio_to_baseline`` and
    ``difference_to_baseline`` with paired intervals (the same items resampled for the cell and the
    baseline). Random controls also get ``seeds_ratio`` and ``seeds_difference`` (the mean over the ``n_seeds``
    control seeds of their group) with intervals that resample the items and the seeds. A ratio's interval is
    NaN when some resample's baseline is 0 (an accuracy of 0 on few items); the difference's is always defined.
    """
    table = pd.concat([read_parquet(path) for path in cell_paths], ignore_index=True)
    items = pd.concat([read_parquet(path) for path in item_paths], ignore_index=True)
    baseline_rows = table[table["condition"] == BASELINE]
    if baseline_rows.empty:
        raise ConfigError("the ablation grid has no baseline cell (condition 'none')")
    baseline = baseline_rows.set_index(["eval_language", "metric"])["value"]
    keys = pd.MultiIndex.from_frame(table[["eval_language", "metric"]])
    table["baseline"] = baseline.reindex(keys).to_numpy()
    by_cell = dict(list(items.groupby(list(CELL_KEYS), sort=False)))
    baseline_items = items[items["condition"] == BASELINE]

    def cell_items(row) -> pd.DataFrame:
        found = by_cell.get(tuple(row[k] for k in CELL_KEYS))
        return _metric_items(found, row["eval_language"], row["metric"]) if found is not None else found

    options = {"n_resamples": uncertainty["n_resamples"], "seed": uncertainty["seed"],
               "confidence": uncertainty["confidence"]}  # fmt: skip
    rows = []
    for _, row in table.iterrows():
        mine = cell_items(row)
        base = _metric_items(baseline_items, row["eval_language"], row["metric"])
        rows.append(interval_columns(row["metric"], base, [mine] if mine is not None and len(mine) else [], options))
    table = pd.concat([table, pd.DataFrame(rows, index=table.index)], axis=1)
    table["n_seeds"] = 0  # the real sets (and the baseline) have no control seeds
    table[list(SEEDS_COLUMNS)] = float("nan")
    random = table[table["control"] == "random"]
    for _, group in random.groupby(["condition", "detector", "set_kind", "target_language", "eval_language", "metric"]):
        treated = [cell_items(row) for _, row in group.iterrows()]
        treated = [t for t in treated if t is not None and len(t)]
        first = group.iloc[0]
        base = _metric_items(baseline_items, first["eval_language"], first["metric"])
        change = interval_columns(first["metric"], base, treated, options)
        table.loc[group.index, "n_seeds"] = len(group)
        for column, source in SEEDS_COLUMNS.items():
            table.loc[group.index, column] = change[source]
    write_parquet_atomic(table, out_path)
