"""The ablation grid's pieces, and the selective effect on a small trained model."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from trained import RANGES, sample_documents, trained_two_language_model

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
    model = copy.deepcopy(trained_two_language_model())
    counts = {}
    for language in RANGES:
        ids = sample_documents(language, 20, 32, seed=7)
        counts[language] = ActivationCounts.from_scores(score_batch(model, ids, torch.ones_like(ids)), TOP_K)
    return model, neuron_sets(counts, rho=0.9)


def test_ablating_a_languages_specific_neurons_is_selective(detected):
    model, neurons = detected
    stages = layer_stages(model.config.num_hidden_layers)
    sizes = langneurons.site_sizes(model)
    baseline = {lang: _perplexity(model, lang) for lang in RANGES}
    for target in RANGES:
        other = next(lang for lang in RANGES if lang != target)
        real = cell_neurons(neurons, target, "specific", "all", stages, sizes, None)
        with langneurons.deactivate(model, real):
            ablated = {lang: _perplexity(model, lang) / baseline[lang] for lang in RANGES}
        control = cell_neurons(neurons, target, "specific", "all", stages, sizes, 0)
        assert len(control) == len(real) and control.merge(real, on=["layer", "site", "index"]).empty
        with langneurons.deactivate(model, control):
            random_ratio = _perplexity(model, target) / baseline[target]
        assert ablated[target] > ablated[other], (target, ablated)
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
