"""Uncertainty of a result: percentile bootstrap intervals over documents or items.

A metric's value is a statistic of its per-item table (``per_item`` in every
result of :func:`langneurons.evaluation.evaluate`): the mean of the items'
values, or for perplexity ``exp(sum NLL / sum tokens)`` over documents.
Resampling the items with replacement and recomputing the statistic gives
its bootstrap distribution; the central ``confidence`` share of it is the
interval (percentile bootstrap, Efron and Tibshirani 1993, ch. 13).

An ablation's effect is a ratio of two values measured on the *same* items
(deactivated over baseline). :func:`paired_ratio_interval` resamples the
items once for both, so the interval reflects the variation of the effect,
not of the items' difficulty, which cancels.

Resampling is seeded (NumPy ``default_rng(seed)``): the same inputs and seed
give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from langneurons.evaluation.common import EvaluationError

__all__ = [
    "Interval",
    "PairedChange",
    "bootstrap_interval",
    "mean_statistic",
    "paired_change_intervals",
    "paired_ratio_interval",
    "perplexity_statistic",
]

Statistic = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class Interval:
    """A statistic on all items and its bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int


def mean_statistic(rows: np.ndarray) -> float:
    """The mean of the first column (or of a 1-D array): accuracy, F1, ROUGE-L, share."""
    rows = np.asarray(rows, dtype=np.float64)
    return float(rows.mean() if rows.ndim == 1 else rows[:, 0].mean())


def perplexity_statistic(rows: np.ndarray) -> float:
    """``exp(sum NLL / sum tokens)`` of rows ``(nll, n_tokens)``: token-weighted, as the perplexity metric."""
    rows = np.asarray(rows, dtype=np.float64)
    tokens = rows[:, 1].sum()
    return math.exp(rows[:, 0].sum() / tokens) if tokens > 0 else float("nan")


def _check(values: np.ndarray, n_resamples: int, confidence: float, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (1, 2) or len(values) == 0:
        raise EvaluationError(f"{what} must be a non-empty [items] or [items, columns] array, not shape {values.shape}")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise EvaluationError(f"n_resamples={n_resamples!r} must be a positive integer (1000 or more for a 95% CI)")
    if not 0 < confidence < 1:
        raise EvaluationError(f"confidence={confidence!r} must be in (0, 1), e.g. 0.95")
    return values


def _resamples(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """``[n_resamples, n_items]`` item indices, each row a draw of ``n_items`` with replacement."""
    return np.random.default_rng(seed).integers(0, n_items, size=(n_resamples, n_items))


def _percentiles(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(
    values: np.ndarray,
    statistic: Statistic = mean_statistic,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over the items (rows) of ``values``.

    ``values`` is ``[items]`` or ``[items, columns]`` (perplexity: NLL and
    token count per document); ``statistic`` maps a resample of its rows to a
    number.
    """
    values = _check(values, n_resamples, confidence, "values")
    stats = np.array([statistic(values[rows]) for rows in _resamples(len(values), n_resamples, seed)])
    return Interval(statistic(values), *_percentiles(stats, confidence), confidence, n_resamples)


@dataclass(frozen=True)
class PairedChange:
    """The change from a baseline to a treatment measured on the same items, as a ratio and as a difference."""

    ratio: Interval
    difference: Interval


def paired_change_intervals(
    baseline: np.ndarray,
    treated: Sequence[np.ndarray],
    statistic: Statistic = mean_statistic,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedChange:
    """Percentile bootstrap intervals of the change from ``baseline`` to ``treated`` over the same items.

    ``treated`` holds one array per replicate of the treatment (the random controls of several seeds, say;
    often just one), each with the rows of ``baseline``: row i is the same item (document) every time. The
    change is the mean over replicates of ``statistic(treated_j) / statistic(baseline)`` (ratio) and of
    ``statistic(treated_j) - statistic(baseline)`` (difference). Each resample draws the same rows for the
    baseline and every replicate; with several replicates it also draws the replicates with replacement, so
    the interval holds both the items' and the replicates' spread. A resample whose baseline statistic is 0
    has no ratio (NaN), and so has the ratio's interval then.
    """
    baseline = _check(baseline, n_resamples, confidence, "baseline")
    if isinstance(treated, np.ndarray) or not len(treated):
        raise EvaluationError("treated must be a non-empty list of arrays, one per replicate of the treatment")
    replicates = [_check(t, n_resamples, confidence, "treated") for t in treated]
    if any(t.shape != baseline.shape for t in replicates):
        raise EvaluationError(
            f"baseline {baseline.shape} and treated {[t.shape for t in replicates]} must hold the same items in "
            "the same order"
        )
    draws = _resamples(len(baseline), n_resamples, seed)
    base = np.array([statistic(baseline[rows]) for rows in draws], dtype=np.float64)
    stats = np.array([[statistic(t[rows]) for t in replicates] for rows in draws], dtype=np.float64)
    if len(replicates) > 1:  # a second stream, so that one replicate gives the plain paired interval
        picks = np.random.default_rng([seed, 1]).integers(0, len(replicates), size=(n_resamples, len(replicates)))
        stats = np.take_along_axis(stats, picks, axis=1)
    whole_base = statistic(baseline)
    whole = np.array([statistic(t) for t in replicates], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (stats / base[:, None]).mean(axis=1)
        ratio_estimate = float((whole / whole_base).mean())
    ratios[~np.isfinite(ratios)] = np.nan
    differences = (stats - base[:, None]).mean(axis=1)
    return PairedChange(
        Interval(ratio_estimate if math.isfinite(ratio_estimate) else math.nan, *_percentiles(ratios, confidence),
                 confidence, n_resamples),
        Interval(float((whole - whole_base).mean()), *_percentiles(differences, confidence), confidence, n_resamples),
    )  # fmt: skip


def paired_ratio_interval(
    baseline: np.ndarray,
    treated: np.ndarray,
    statistic: Statistic = mean_statistic,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Percentile bootstrap interval of ``statistic(treated) / statistic(baseline)`` over the same items.

    Row i of both arrays is the same item (document) evaluated twice; each
    resample draws the same rows from both (:func:`paired_change_intervals`).
    """
    return paired_change_intervals(
        baseline, [treated], statistic, n_resamples=n_resamples, seed=seed, confidence=confidence
    ).ratio
