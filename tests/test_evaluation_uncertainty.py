"""Bootstrap intervals (langneurons.evaluation.uncertainty) against closed forms and explicit resamples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from evaluation_helpers import TEXTS, char_tokenizer, corpus
from models import tiny_model

from langneurons import evaluation as E


def explicit_resample_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of resamples drawn one by one, each item with probability 1/n."""
    rng = np.random.default_rng(seed)
    return np.array([values[rng.integers(0, len(values), size=len(values))].mean() for _ in range(n_resamples)])


def test_bootstrap_interval_is_the_percentile_interval_of_the_resampled_means():
    values = np.random.default_rng(1).exponential(size=30)
    interval = E.bootstrap_interval(values, n_resamples=500, seed=7)
    means = explicit_resample_means(values, 500, seed=7)
    assert (interval.low, interval.high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert interval.estimate == pytest.approx(values.mean()) and interval.n_resamples == 500
    assert E.bootstrap_interval(values, n_resamples=500, seed=7) == interval  # seeded
    assert E.bootstrap_interval(values, n_resamples=500, seed=8) != interval


def test_bootstrap_interval_of_a_two_item_mean_has_its_closed_form():
    # resampling [0, 1]: the mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4
    values = np.array([0.0, 1.0])
    interval = E.bootstrap_interval(values, n_resamples=4000, seed=0)
    assert (interval.low, interval.high) == (0.0, 1.0)  # both tails (2.5%) lie inside the 1/4 atoms
    central = E.bootstrap_interval(values, n_resamples=4000, seed=0, confidence=0.4)
    assert (central.low, central.high) == (0.5, 0.5)  # the 30% and 70% quantiles lie inside the 1/2 atom
    constant = E.bootstrap_interval(np.full(7, 0.3), n_resamples=50)
    assert (constant.low, constant.estimate, constant.high) == pytest.approx((0.3, 0.3, 0.3))


def test_bootstrap_interval_of_a_mean_matches_the_normal_approximation():
    values = np.random.default_rng(2).normal(size=400)
    interval = E.bootstrap_interval(values, n_resamples=2000, seed=3)
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert (interval.high - interval.low) / 2 == pytest.approx(half_width, rel=0.1)
    assert (interval.low + interval.high) / 2 == pytest.approx(values.mean(), abs=0.2 * half_width)


def test_paired_ratio_interval_resamples_the_same_items_for_both():
    baseline = np.random.default_rng(4).uniform(1, 10, size=50)  # items of very different difficulty
    doubled = E.paired_ratio_interval(baseline, 2 * baseline, n_resamples=300, seed=0)
    assert (doubled.low, doubled.estimate, doubled.high) == pytest.approx((2.0, 2.0, 2.0))
    treated = baseline * np.random.default_rng(5).uniform(1.5, 2.5, size=50)
    paired = E.paired_ratio_interval(baseline, treated, n_resamples=300, seed=9)
    rng = np.random.default_rng(9)
    ratios = []
    for _ in range(300):
        rows = rng.integers(0, 50, size=50)
        ratios.append(treated[rows].mean() / baseline[rows].mean())
    assert (paired.low, paired.high) == pytest.approx(tuple(np.percentile(ratios, [2.5, 97.5])))
    assert paired.estimate == pytest.approx(treated.mean() / baseline.mean())
    # unpaired resampling would mix the items' difficulty into the ratio: a wider interval
    unpaired = explicit_resample_means(treated, 300, 1) / explicit_resample_means(baseline, 300, 2)
    assert paired.high - paired.low < (np.percentile(unpaired, 97.5) - np.percentile(unpaired, 2.5)) / 2


def test_perplexity_interval_resamples_documents_token_weighted():
    documents = np.array([[10.0, 5], [4.0, 2], [30.0, 15]])  # every document has 2 nats per token
    interval = E.bootstrap_interval(documents, E.perplexity_statistic, n_resamples=100)
    assert (interval.low, interval.estimate, interval.high) == pytest.approx((math.e**2,) * 3)
    uneven = np.array([[10.0, 10], [40.0, 10]])
    assert E.perplexity_statistic(uneven) == pytest.approx(math.exp(50 / 20))


def test_bad_input_and_undefined_ratios():
    with pytest.raises(E.EvaluationError, match="n_resamples"):
        E.bootstrap_interval(np.ones(3), n_resamples=0)
    with pytest.raises(E.EvaluationError, match="confidence"):
        E.bootstrap_interval(np.ones(3), confidence=95)
    with pytest.raises(E.EvaluationError, match="non-empty"):
        E.bootstrap_interval(np.array([]))
    with pytest.raises(E.EvaluationError, match="same items"):
        E.paired_ratio_interval(np.ones(3), np.ones(4))
    zero = E.paired_ratio_interval(np.zeros(4), np.ones(4), n_resamples=20)
    assert math.isnan(zero.estimate) and math.isnan(zero.low) and math.isnan(zero.high)


def test_metric_intervals_from_evaluated_results():
    model, tok = tiny_model("llama"), char_tokenizer()
    ppl = E.evaluate(model, tok, "perplexity", TEXTS, "en", progress=False)
    interval = E.metric_interval("perplexity", ppl["per_item"], n_resamples=200)
    assert len(ppl["per_item"]) == len(TEXTS) and interval.estimate == pytest.approx(ppl["value"])
    assert interval.low <= ppl["value"] <= interval.high
    items = E.build_continuation_items(corpus(languages=("en",)), n_items=8, seed=0)
    result = E.evaluate(model, tok, "continuation", items, "en", progress=False)
    assert E.metric_interval("continuation", result["per_item"], n_resamples=200).estimate == result["value"]
    # an ablation evaluates the same items again: their ratio has a paired interval
    ratio = E.paired_metric_interval("perplexity", ppl["per_item"], ppl["per_item"], n_resamples=50)
    assert (ratio.low, ratio.estimate, ratio.high) == pytest.approx((1.0, 1.0, 1.0))
    with pytest.raises(E.EvaluationError, match="same items"):
        E.paired_metric_interval("perplexity", ppl["per_item"], ppl["per_item"].iloc[:-1])
    with pytest.raises(E.EvaluationError, match=r"lacks column\(s\) \['n_tokens', 'nll'\]"):
        E.metric_interval("perplexity", pd.DataFrame({"item": [0], "value": [1.0]}))
    assert {name for name, metric in E.METRICS.items() if metric.chance} == {"continuation", "xcopa", "xcsqa"}
