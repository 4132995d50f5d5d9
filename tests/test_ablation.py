"""The ablation grid's pieces, and the selective effect on a small trained model."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from trained import RANGES, sample_documents, trained_model

import langneurons
from langneurons.evaluation import sequence_logprobs
from langneurons.interventions import layer_stages
from langneurons.scoring import score_batch
from langneurons.selection import ActivationCounts, neuron_sets
from langneurons.steps.ablation import cell_neurons
from langneurons.steps.common import ConfigError

TOP_K = {"ffn": 0.25, "attn_q": 0.25, "attn_k": 0.25, "attn_v": 0.25}


def _perplexity(model, language):
    docs = sample_documents(language, 20, 32, seed=99).tolist()
    sums, counts = sequence_logprobs(model, docs, [1] * len(docs), progress=False)
    return float(np.exp(-sums.sum() / counts.sum()))


@pytest.fixture(scope="module")
def detected():
    model = copy.deepcopy(trained_model())
    counts = {}
    for language in RANGES:
        ids = sample_documents(language, 20, 32, seed=7)
        counts[language] = ActivationCounts.from_scores(score_batch(model, ids, torch.ones_like(ids)), TOP_K)
    return model, neuron_sets(counts, rho=0.9)


def test_ablating_a_languages_specific_neurons_is_selective(detected):
    model, neurons = detected
    keys = ["layer", "site", "index"]
    # three languages: a specific set may keep neurons that one other language shares, unlike the exclusive set
    grown = [
        lang for lang in RANGES
        if len(neurons[(neurons.language == lang) & (neurons.set_kind == "specific")])
        > len(neurons[(neurons.language == lang) & (neurons.set_kind == "exclusive")])
    ]  # fmt: skip
    assert grown, "specific equals exclusive for every language: the test would not tell them apart"
    stages = layer_stages(model.config.num_hidden_layers)
    sizes = langneurons.site_sizes(model)
    baseline = {lang: _perplexity(model, lang) for lang in RANGES}
    for target in RANGES:
        real = cell_neurons(neurons, target, "specific", "all", stages, sizes, None)
        with langneurons.deactivate(model, real):
            ablated = {lang: _perplexity(model, lang) / baseline[lang] for lang in RANGES}
        control = cell_neurons(neurons, target, "specific", "all", stages, sizes, 0)
        assert len(control) == len(real) and control.merge(real, on=keys).empty
        with langneurons.deactivate(model, control):
            random_ratio = _perplexity(model, target) / baseline[target]
        others = {lang: ratio for lang, ratio in ablated.items() if lang != target}
        assert ablated[target] > max(others.values()), (target, ablated)
        assert ablated[target] - 1 > 2 * abs(random_ratio - 1), (target, ablated, random_ratio)


def test_cells_name_missing_targets_and_allow_empty_conditions():
    neurons = pd.DataFrame(
        {"language": "aa", "set_kind": "specific", "layer": [0, 0], "site": ["ffn", "attn_q"], "index": [1, 2]}
    )
    stages = layer_stages(3)
    sizes = {"ffn": 8, "attn_q": 8, "attn_k": 4, "attn_v": 4}
    with pytest.raises(ConfigError, match="target 'zz' has no 'specific' neurons"):
        cell_neurons(neurons, "zz", "specific", "all", stages, sizes, None)
    # a set without neurons in one condition is a finding (the cell holds NaN), not an error
    assert cell_neurons(neurons, "aa", "specific", "generation", stages, sizes, None).empty
    assert cell_neurons(neurons, "aa", "specific", "generation", stages, sizes, 0).empty
    assert len(cell_neurons(neurons, "aa", "specific", "understanding", stages, sizes, None)) == 2
