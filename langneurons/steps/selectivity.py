"""Workflow steps: the selectivity sweep, which set rule deactivates one language and spares the others.

A cell is one (scoring method, top-k, set kind). It builds every language's set
of that kind from the cached activation counts, loads the model once, and for
each target language deactivates the target's set (then same-size random
controls, one per seed) through hooks, one set after another, measuring the
NLL of every eval document of every language. The cell keeps the per-document
NLLs; :func:`summarise_selectivity` turns them into ratios with bootstrap
intervals over the documents, :func:`best_rules` names the best rule per
language and overall against a goal (the frontier figure is
:func:`langneurons.plotting.selectivity_frontier_figure`).

The ratio of a language is its perplexity with the set off over its baseline
perplexity; the selectivity of a set is the ratio on its own language divided by
the mean ratio on the other languages.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from langneurons import corpora, evaluation
from langneurons.architectures import dimensions, site_sizes
from langneurons.config import parse_top_k_label, site_top_k, top_k_label  # noqa: F401 - the sweep's names
from langneurons.evaluation import bootstrap_interval
from langneurons.io import provenance, read_parquet, write_json_atomic, write_parquet_atomic
from langneurons.neuronset import NeuronSet, NeuronSetError, NeuronSpace
from langneurons.selection import (
    ActivationCounts,
    language_set,
    neuron_sets,
    parse_set_kind,
)
from langneurons.steps.common import ConfigError, load_configured_model, model_record

#: One row per (set deactivated, eval document): the cell's measurement.
CELL_COLUMNS = (
    "method", "top_k", "set_kind", "target_language", "control", "seed", "n_neurons",
    "eval_language", "item", "nll", "n_tokens",
)  # fmt: skip
#: The statistics of a target's set, each with ``_low`` / ``_high`` bootstrap bounds in the table.
STATISTICS = (
    "ratio_on_target", "mean_ratio_others", "max_ratio_others", "selectivity",
    "random_ratio", "random_max_ratio", "random_selectivity",
)  # fmt: skip
#: The goal's criteria: (statistic, comparison, goal key).
GOAL_CRITERIA = (
    ("ratio_on_target", ">=", "ratio_on_target"),
    ("selectivity", ">=", "selectivity"),
    ("random_ratio", "<=", "random_ratio"),
)
BASELINE = "none"
logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the cell


def eval_documents(corpus_paths: Mapping[str, str], n_docs: int) -> dict[str, list[str]]:
    """The first ``n_docs`` eval documents (by doc_id) of every language; all languages must have as many.

    The bootstrap resamples document positions jointly over the languages, so every language needs the same count.
    """
    docs = {
        lang: corpora.read_corpus(path, "eval").sort_values("doc_id").head(n_docs)["text"].tolist()
        for lang, path in corpus_paths.items()
    }
    counts = {lang: len(texts) for lang, texts in docs.items()}
    if len(set(counts.values())) != 1 or not min(counts.values()):
        raise ConfigError(
            f"the selectivity sweep evaluates the same number of eval documents in every language, but there are "
            f"{counts}: lower evaluation.n_docs to {min(counts.values())} or raise corpus.split_sizes.eval"
        )
    return docs


def document_nlls(
    model, tokenizer, eval_docs: Mapping[str, Sequence[str]], settings: Mapping[str, Any]
) -> pd.DataFrame:
    """``eval_language, item, nll, n_tokens`` of every eval document under the model's current hooks."""
    frames = []
    for language, texts in eval_docs.items():
        table = evaluation.document_nll(
            model, tokenizer, list(texts), max_length=settings["max_length"], batch_size=settings["batch_size"],
            progress=False,
        )  # fmt: skip
        frames.append(table.assign(eval_language=language))
    return pd.concat(frames, ignore_index=True)[["eval_language", "item", "nll", "n_tokens"]]


def cell_sets(count_paths: Mapping[str, str], rho: float, set_kind: str) -> pd.DataFrame:
    """Every language's ``set_kind`` set, built from the cached activation counts."""
    per_language = {lang: ActivationCounts.load(path) for lang, path in count_paths.items()}
    return neuron_sets(per_language, rho, [set_kind])


def measure_sets(
    model,
    tokenizer,
    neurons: pd.DataFrame,
    set_kind: str,
    targets: Sequence[str],
    control_seeds: Sequence[int],
    eval_docs: Mapping[str, Sequence[str]],
    settings: Mapping[str, Any],
) -> pd.DataFrame:
    """Per-document NLLs with nothing, then each target's set, then each of its random controls deactivated.

    An empty set deactivates nothing, so its rows (and its controls') are the baseline's, not a new forward
    pass. A control that cannot be drawn (a layer where the set holds more than half the neurons) is left out
    with a warning: the summary then has no random ratio for that set.
    """
    from langneurons.interventions import deactivate

    baseline = document_nlls(model, tokenizer, eval_docs, settings)
    parts = [baseline.assign(target_language=BASELINE, control=BASELINE, seed=-1, n_neurons=0)]
    # the text model's layers, also when the config nests it (multimodal Gemma-3)
    sizes, n_layers = site_sizes(model), dimensions(model).n_layers
    for target in targets:
        chosen = language_set(neurons, target, set_kind)
        sets = [("real", -1, chosen)]
        space = NeuronSpace(n_layers, sizes)
        for seed in control_seeds:
            try:
                control = NeuronSet(chosen, space).random_control(seed).table if len(chosen) else chosen
                sets.append(("random", seed, control))
            except NeuronSetError as error:
                logger.warning("no random control of %r with seed %d: %s", target, seed, error)
        for control, seed, deactivated in sets:
            if deactivated.empty:
                measured = baseline
            else:
                with deactivate(model, deactivated):
                    measured = document_nlls(model, tokenizer, eval_docs, settings)
            parts.append(
                measured.assign(target_language=target, control=control, seed=seed, n_neurons=len(deactivated))
            )
    return pd.concat(parts, ignore_index=True)


def selectivity_cell_step(
    corpus_paths: Mapping[str, str],
    count_paths: Mapping[str, str],
    model_params: Mapping[str, Any],
    model_dir: str | None,
    cell: Mapping[str, str],
    rho: float,
    targets: Sequence[str] | None,
    control_seeds: Sequence[int],
    settings: Mapping[str, Any],
    out_path: str,
    record_path: str,
) -> None:
    """One (method, top-k, set kind): every target's set and its controls deactivated in turn, one model load."""
    targets = list(targets or corpus_paths)
    unknown = [lang for lang in targets if lang not in count_paths]
    if unknown:
        raise ConfigError(f"selectivity.targets {unknown} are not in `languages` {list(count_paths)}")
    neurons = cell_sets(count_paths, rho, cell["set_kind"])
    eval_docs = eval_documents(corpus_paths, settings["n_docs"])
    model, tokenizer = load_configured_model(model_params, model_dir)
    table = measure_sets(model, tokenizer, neurons, cell["set_kind"], targets, control_seeds, eval_docs, settings)
    table = table.assign(method=cell["method"], top_k=cell["top_k"], set_kind=cell["set_kind"])
    write_parquet_atomic(table[list(CELL_COLUMNS)], out_path)
    write_json_atomic(
        provenance(
            {
                "cell": dict(cell),
                "rho": rho,
                "targets": targets,
                "control_seeds": list(control_seeds),
                "settings": dict(settings),
            },
            **model_record(model_params, model_dir),
            set_sizes={lang: int((neurons["language"] == lang).sum()) for lang in targets},
        ),  # fmt: skip
        record_path,
    )


# --------------------------------------------------------------------------- the summary


def _matrix(rows: pd.DataFrame, languages: Sequence[str], column: str) -> np.ndarray:
    """``[items, languages]`` values of one measured set."""
    wide = rows.pivot(index="item", columns="eval_language", values=column)
    return wide.reindex(columns=list(languages)).to_numpy(dtype=np.float64)


def _ratios(nll: np.ndarray, baseline: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Perplexity ratios per language (last axis) of the rows given: ``exp((sum nll - sum base) / sum tokens)``."""
    return np.exp((nll.sum(axis=-2) - baseline.sum(axis=-2)) / tokens.sum(axis=-2))


def set_statistics(n_languages: int, target: int, n_controls: int) -> dict[str, Callable[[np.ndarray], float]]:
    """The statistics of one target's set, as functions of document rows.

    A row holds, for one document position, ``n_languages`` columns each of the baseline NLL, the token counts,
    the NLL with the set off, and the NLL with each of the ``n_controls`` random controls off.
    """
    n = n_languages
    others = [i for i in range(n) if i != target]

    def ratios(rows: np.ndarray, block: int) -> np.ndarray:
        return _ratios(rows[:, (2 + block) * n : (3 + block) * n], rows[:, :n], rows[:, n : 2 * n])

    def real(rows: np.ndarray) -> np.ndarray:
        return ratios(rows, 0)

    def controls(rows: np.ndarray) -> np.ndarray:
        return np.stack([ratios(rows, 1 + c) for c in range(n_controls)]) if n_controls else np.full((1, n), np.nan)

    def selectivity(r: np.ndarray) -> np.ndarray:
        return r[..., target] / r[..., others].mean(axis=-1)

    return {
        "ratio_on_target": lambda rows: float(real(rows)[target]),
        "mean_ratio_others": lambda rows: float(real(rows)[others].mean()),
        "max_ratio_others": lambda rows: float(real(rows)[others].max()),
        "selectivity": lambda rows: float(selectivity(real(rows))),
        "random_ratio": lambda rows: float(controls(rows)[:, target].mean()),
        "random_max_ratio": lambda rows: float(controls(rows).max()),
        "random_selectivity": lambda rows: float(selectivity(controls(rows)).mean()),
    }


def _target_rows(group: pd.DataFrame, baseline: pd.DataFrame, languages: Sequence[str]) -> tuple[np.ndarray, int]:
    real = group[group["control"] == "real"]
    seeds = sorted(group.loc[group["control"] == "random", "seed"].unique())
    blocks = [
        _matrix(baseline, languages, "nll"),
        _matrix(baseline, languages, "n_tokens"),
        _matrix(real, languages, "nll"),
    ]
    for seed in seeds:
        control = group[(group["control"] == "random") & (group["seed"] == seed)]
        blocks.append(_matrix(control, languages, "nll"))
    return np.concatenate(blocks, axis=1), len(seeds)


def summarise_selectivity(
    cells: pd.DataFrame, *, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per (method, top_k, set_kind, target): :data:`STATISTICS` with percentile bootstrap intervals.

    The documents are resampled by position, jointly over the languages and over the baseline, the set and
    its controls (the same resample for every statistic), so the intervals reflect the documents' variation
    in the effect, not in their difficulty. ``random_*`` average over the control seeds (NaN without any).
    """
    missing = sorted(set(CELL_COLUMNS) - set(cells.columns))
    if missing:
        raise ConfigError(f"selectivity cells lack column(s) {missing}")
    rows = []
    for (method, top_k, set_kind), cell in cells.groupby(["method", "top_k", "set_kind"], sort=True):
        languages = sorted(cell["eval_language"].unique())
        baseline = cell[cell["control"] == BASELINE]
        rule = parse_set_kind(set_kind)
        for target, group in cell[cell["control"] != BASELINE].groupby("target_language", sort=True):
            values, n_controls = _target_rows(group, baseline, languages)
            statistics = set_statistics(len(languages), languages.index(target), n_controls)
            row = {
                "method": method, "top_k": top_k, "set_kind": set_kind, "rule": rule.kind,
                "parameter": float(rule.parameter) if rule.parameter is not None else math.nan,
                "target_language": target,
                "n_neurons": int(group.loc[group["control"] == "real", "n_neurons"].iloc[0]),
                "n_docs": len(values), "n_control_seeds": n_controls,
            }  # fmt: skip
            real = _ratios(values[:, 2 * len(languages) : 3 * len(languages)], values[:, : len(languages)],
                           values[:, len(languages) : 2 * len(languages)])  # fmt: skip
            others = [lang for lang in languages if lang != target]
            row["worst_other_language"] = others[int(np.argmax([real[languages.index(o)] for o in others]))]
            for name, statistic in statistics.items():
                with np.errstate(invalid="ignore", divide="ignore"):
                    interval = bootstrap_interval(
                        values, statistic, n_resamples=n_resamples, seed=seed, confidence=confidence
                    )
                row |= {name: interval.estimate, f"{name}_low": interval.low, f"{name}_high": interval.high}
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the goal and the best rules


def criteria_met(table: pd.DataFrame, goal: Mapping[str, float]) -> pd.DataFrame:
    """Bool columns ``meets_<statistic>`` (on the estimates) and ``meets_goal`` (all of them)."""
    met = pd.DataFrame(index=table.index)
    for statistic, comparison, key in GOAL_CRITERIA:
        values = table[statistic]
        met[f"meets_{statistic}"] = values >= goal[key] if comparison == ">=" else values <= goal[key]
    met["meets_goal"] = met.all(axis=1)
    return met


def best_rules(table: pd.DataFrame, goal: Mapping[str, float]) -> pd.DataFrame:
    """The best (method, top_k, set_kind) per target language, and overall (``target_language`` = ``all``).

    Per language: the most goal criteria met, then the highest selectivity. Overall: the most languages
    meeting the whole goal, then the most criteria met by its worst language, then the highest geometric-mean
    selectivity. ``n_languages_meeting`` counts the languages whose set meets the whole goal.
    """
    met = criteria_met(table, goal)
    scored = table.assign(**met, n_criteria=met.drop(columns="meets_goal").sum(axis=1))
    keys = ["method", "top_k", "set_kind"]
    per_language = (
        scored.sort_values(["n_criteria", "selectivity"], ascending=False, kind="stable")
        .groupby("target_language", sort=True)
        .head(1)
        .sort_values("target_language")
        .assign(n_languages_meeting=lambda t: t["meets_goal"].astype(int))
    )
    overall = (
        scored.assign(log_selectivity=np.log(scored["selectivity"]), log_ratio=np.log(scored["ratio_on_target"]))
        .groupby(keys, sort=True)
        .agg(
            n_languages_meeting=("meets_goal", "sum"),
            n_criteria=("n_criteria", "min"),
            log_selectivity=("log_selectivity", "mean"),
            log_ratio=("log_ratio", "mean"),
            random_ratio=("random_ratio", "max"),
            mean_ratio_others=("mean_ratio_others", "mean"),
        )
        .reset_index()
    )
    overall["selectivity"] = np.exp(overall.pop("log_selectivity"))
    overall["ratio_on_target"] = np.exp(overall.pop("log_ratio"))
    overall["meets_goal"] = overall["n_languages_meeting"] == table["target_language"].nunique()
    overall = overall.sort_values(
        ["n_languages_meeting", "n_criteria", "selectivity"], ascending=False, kind="stable"
    ).head(1)
    columns = [*keys, "target_language", "ratio_on_target", "mean_ratio_others", "selectivity", "random_ratio",
               "n_criteria", "n_languages_meeting", "meets_goal"]  # fmt: skip
    return pd.concat([per_language, overall.assign(target_language="all")], ignore_index=True)[columns]


def selectivity_table_step(
    cell_paths: Sequence[str],
    settings: Mapping[str, Any],
    seed: int,
    table_path: str,
    best_path: str,
) -> None:
    """All cells summarised, and the best rules against the goal."""
    cells = pd.concat([read_parquet(path) for path in cell_paths], ignore_index=True)
    table = summarise_selectivity(
        cells, n_resamples=settings["n_resamples"], seed=seed, confidence=settings["confidence"]
    )
    table = pd.concat([table, criteria_met(table, settings["goal"])], axis=1)
    write_parquet_atomic(table, table_path)
    write_parquet_atomic(best_rules(table, settings["goal"]), best_path)
