"""Intervals of the grids' aggregate tables, against bootstraps written out here on hand-made item values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from langneurons.steps.ablation import CELL_KEYS, GRID_COLUMNS, ablation_grid_step
from langneurons.steps.evaluation import ITEM_COLUMNS
from langneurons.steps.finetune import FINETUNE_COLUMNS, finetune_results_step

UNCERTAINTY = {"n_resamples": 400, "confidence": 0.9, "seed": 5}
N_ITEMS = 12


def mean(rows: np.ndarray) -> float:
    return float(rows[:, 0].mean())


def perplexity(rows: np.ndarray) -> float:
    return math.exp(rows[:, 0].sum() / rows[:, 1].sum())


STATISTICS = {"continuation": (mean, ["value"]), "perplexity": (perplexity, ["nll", "n_tokens"])}


def percentile_interval(stats: list[float], confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    return tuple(np.percentile(stats, [tail, 100 - tail]))


def reference_interval(values: np.ndarray, statistic, n: int, seed: int, confidence: float):
    """Each resample drawn on its own: ``n`` items with replacement, the statistic recomputed."""
    rng = np.random.default_rng(seed)
    return percentile_interval([statistic(values[rng.integers(0, len(values), size=len(values))]) for _ in range(n)],
                               confidence)  # fmt: skip


def reference_changes(baseline: np.ndarray, treated: list[np.ndarray], statistic, n: int, seed: int, confidence):
    """Ratio and difference of the seeds' mean over the baseline: the same items drawn for all, and with several
    seeds, the seeds drawn with replacement too (from their own stream)."""
    items, seeds = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    ratios, differences = [], []
    for _ in range(n):
        rows = items.integers(0, len(baseline), size=len(baseline))
        picked = seeds.integers(0, len(treated), size=len(treated)) if len(treated) > 1 else [0]
        base = statistic(baseline[rows])
        ratios.append(np.mean([statistic(treated[j][rows]) / base for j in picked]))
        differences.append(np.mean([statistic(treated[j][rows]) - base for j in picked]))
    return percentile_interval(ratios, confidence), percentile_interval(differences, confidence)


def hand_made_items(rng: np.random.Generator, metric: str, scale: float) -> np.ndarray:
    if metric == "perplexity":
        tokens = rng.integers(5, 40, size=N_ITEMS).astype(float)
        return np.column_stack([tokens * rng.uniform(1.5, 3.0, size=N_ITEMS) * scale, tokens])
    return (rng.uniform(size=(N_ITEMS, 1)) < 0.6 / scale).astype(float)


def write_cell(folder, keys: dict, values: dict[tuple[str, str], np.ndarray]) -> tuple[str, str]:
    """A cell's summary and per-item tables as the ablation step writes them, from hand-made item values."""
    rows, items = [], []
    for (language, metric), array in values.items():
        statistic, columns = STATISTICS[metric]
        rows.append({"eval_language": language, "metric": metric, "value": statistic(array), "n": len(array),
                     "chance": 0.25 if metric == "continuation" else np.nan})  # fmt: skip
        frame = pd.DataFrame({"eval_language": language, "metric": metric, "item": np.arange(len(array)),
                              "value": np.nan, "nll": np.nan, "n_tokens": np.nan})  # fmt: skip
        frame[columns] = array
        items.append(frame)
    name = "-".join(str(keys[k]) for k in CELL_KEYS)
    cell, item_path = folder / f"{name}.parquet", folder / f"{name}.items.parquet"
    pd.DataFrame(rows).assign(**keys, n_neurons_deactivated=4)[list(GRID_COLUMNS)].to_parquet(cell)
    pd.concat(items).assign(**keys)[[*CELL_KEYS, *ITEM_COLUMNS]].to_parquet(item_path)
    return str(cell), str(item_path)


def test_grid_intervals_are_the_bootstraps_of_the_items(tmp_path):
    rng = np.random.default_rng(0)
    combos = [("fr", "continuation"), ("fr", "perplexity"), ("zh", "perplexity")]
    baseline = {c: hand_made_items(rng, c[1], 1.0) for c in combos}
    real = {c: hand_made_items(rng, c[1], 1.6) for c in combos}
    randoms = [{c: hand_made_items(rng, c[1], 1.1) for c in combos} for _ in range(3)]
    base_keys = dict(condition="none", detector="none", set_kind="none", target_language="none", control="real")
    cells = [write_cell(tmp_path, {**base_keys, "seed": -1}, baseline)]
    keys = dict(condition="all", detector="plnd", set_kind="specific", target_language="fr")
    cells.append(write_cell(tmp_path, {**keys, "control": "real", "seed": -1}, real))
    cells += [write_cell(tmp_path, {**keys, "control": "random", "seed": s}, v) for s, v in enumerate(randoms)]
    ablation_grid_step([c for c, _ in cells], [i for _, i in cells], UNCERTAINTY, str(tmp_path / "grid.parquet"))
    grid = pd.read_parquet(tmp_path / "grid.parquet")
    n, seed, confidence = UNCERTAINTY["n_resamples"], UNCERTAINTY["seed"], UNCERTAINTY["confidence"]
    assert len(grid) == 5 * len(combos)
    for _, row in grid.iterrows():
        combo = (row["eval_language"], row["metric"])
        statistic = STATISTICS[row["metric"]][0]
        if row["condition"] == "none":
            values = baseline[combo]
        elif row["control"] == "real":
            values = real[combo]
        else:
            values = randoms[row["seed"]][combo]
        assert row["value"] == pytest.approx(statistic(values))
        assert (row["low"], row["high"]) == pytest.approx(reference_interval(values, statistic, n, seed, confidence))
        (ratio_low, ratio_high), (diff_low, diff_high) = reference_changes(baseline[combo], [values], statistic, n,
                                                                           seed, confidence)  # fmt: skip
        assert row["ratio_to_baseline"] == pytest.approx(statistic(values) / statistic(baseline[combo]))
        assert (row["ratio_low"], row["ratio_high"]) == pytest.approx((ratio_low, ratio_high))
        assert row["difference_to_baseline"] == pytest.approx(statistic(values) - statistic(baseline[combo]))
        assert (row["difference_low"], row["difference_high"]) == pytest.approx((diff_low, diff_high))
        assert row["chance"] == 0.25 if row["metric"] == "continuation" else math.isnan(row["chance"])
        if row["control"] == "random":
            treated = [r[combo] for r in randoms]
            (low, high), _ = reference_changes(baseline[combo], treated, statistic, n, seed, confidence)
            assert row["n_seeds"] == 3
            assert row["seeds_ratio"] == pytest.approx(np.mean([statistic(t) / statistic(baseline[combo])
                                                                for t in treated]))  # fmt: skip
            assert (row["seeds_ratio_low"], row["seeds_ratio_high"]) == pytest.approx((low, high))
            _, (low, high) = reference_changes(baseline[combo], treated, statistic, n, seed, confidence)
            assert (row["seeds_difference_low"], row["seeds_difference_high"]) == pytest.approx((low, high))
        else:
            assert row["n_seeds"] == 0 and math.isnan(row["seeds_ratio_low"])


def test_finetune_intervals_are_paired_with_the_model_before(tmp_path):
    rng = np.random.default_rng(1)
    combos = [("fr", "continuation"), ("de", "perplexity")]
    values = {method: {c: hand_made_items(rng, c[1], scale) for c in combos}
              for method, scale in (("none", 1.0), ("targeted", 0.8), ("full", 0.9))}  # fmt: skip
    tables, items = [], []
    for method, by_combo in values.items():
        cell, item_path = write_cell(tmp_path, {**dict.fromkeys(CELL_KEYS, "x"), "seed": 0}, by_combo)
        summary = pd.read_parquet(cell).assign(method=method, target_language="fr", trainable_params=0, wall_s=1.0,
                                               tokens=10)  # fmt: skip
        tables.append(str(tmp_path / f"{method}.parquet"))
        summary[list(FINETUNE_COLUMNS)].to_parquet(tables[-1])
        per_item = pd.read_parquet(item_path).assign(method=method, target_language="fr")
        items.append(str(tmp_path / f"{method}.items.parquet"))
        per_item[["method", "target_language", *ITEM_COLUMNS]].to_parquet(items[-1])
    finetune_results_step(tables, items, UNCERTAINTY, str(tmp_path / "results.parquet"))
    results = pd.read_parquet(tmp_path / "results.parquet")
    n, seed, confidence = UNCERTAINTY["n_resamples"], UNCERTAINTY["seed"], UNCERTAINTY["confidence"]
    assert len(results) == 3 * len(combos)
    for _, row in results.iterrows():
        combo = (row["eval_language"], row["metric"])
        statistic = STATISTICS[row["metric"]][0]
        mine, before = values[row["method"]][combo], values["none"][combo]
        assert (row["low"], row["high"]) == pytest.approx(reference_interval(mine, statistic, n, seed, confidence))
        assert row["before"] == pytest.approx(statistic(before))
        ratio, difference = reference_changes(before, [mine], statistic, n, seed, confidence)
        assert (row["ratio_low"], row["ratio_high"]) == pytest.approx(ratio)
        assert (row["difference_low"], row["difference_high"]) == pytest.approx(difference)
        assert row["difference_to_before"] == pytest.approx(statistic(mine) - statistic(before))
