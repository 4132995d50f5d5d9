"""The selectivity sweep: hand-made NLLs against hand-computed ratios, the measurement against zeroed weights."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from models import VOCAB, tiny_model, word_tokenizer

from langneurons.evaluation import document_nll
from langneurons.interventions import zero_weights_
from langneurons.neuronset import NeuronSet, NeuronSpace
from langneurons.plotting import pareto_front, selectivity_frontier_figure, selectivity_points
from langneurons.selection import ActivationCounts
from langneurons.steps.common import ConfigError
from langneurons.steps.selectivity import (
    CELL_COLUMNS,
    best_rules,
    cell_sets,
    measure_sets,
    parse_top_k_label,
    summarise_selectivity,
    top_k_label,
)

LANGUAGES = ("en", "fr", "zh")
GOAL = {"ratio_on_target": 1.2, "selectivity": 1.5, "random_ratio": 1.05}


def _rows(target, control, seed, nll, tokens, set_kind="specific", n_neurons=5):
    """Cell rows from ``nll[language][doc]`` and ``tokens[language][doc]``."""
    return [
        {"method": "paper", "top_k": "0.25", "set_kind": set_kind, "target_language": target, "control": control,
         "seed": seed, "n_neurons": n_neurons, "eval_language": lang, "item": i, "nll": nll[lang][i],
         "n_tokens": tokens[lang][i]}
        for lang in LANGUAGES
        for i in range(len(nll[lang]))
    ]  # fmt: skip


@pytest.fixture
def hand_made():
    tokens = {"en": [10, 20, 30, 40], "fr": [5, 5, 10, 20], "zh": [8, 16, 8, 16]}
    base = {"en": [20.0, 30.0, 50.0, 60.0], "fr": [10.0, 12.0, 20.0, 30.0], "zh": [16.0, 20.0, 12.0, 30.0]}
    # fr's set: +1 nat per token on fr's documents, +0.1 on en, +0 on zh; its control: +0.02 everywhere
    real = {
        "en": [b + 0.1 * t for b, t in zip(base["en"], tokens["en"])],
        "fr": [b + 1.0 * t for b, t in zip(base["fr"], tokens["fr"])],
        "zh": list(base["zh"]),
    }
    control = {lang: [b + 0.02 * t for b, t in zip(base[lang], tokens[lang])] for lang in LANGUAGES}
    rows = _rows("none", "none", -1, base, tokens, n_neurons=0)
    rows += _rows("fr", "real", -1, real, tokens) + _rows("fr", "random", 3, control, tokens)
    return pd.DataFrame(rows)[list(CELL_COLUMNS)], base, real, control, tokens


def _perplexity(nll, tokens):
    return math.exp(sum(nll) / sum(tokens))


def test_summary_ratios_match_hand_computed_perplexities(hand_made):
    cells, base, real, control, tokens = hand_made
    table = summarise_selectivity(cells, n_resamples=200, seed=1)
    assert len(table) == 1
    row = table.iloc[0]
    ratio = {lang: _perplexity(real[lang], tokens[lang]) / _perplexity(base[lang], tokens[lang]) for lang in LANGUAGES}
    # +1 nat per token on fr is a ratio of e exactly; +0.1 on en is e^0.1; zh is untouched
    assert ratio["fr"] == pytest.approx(math.e) and ratio["en"] == pytest.approx(math.exp(0.1))
    assert row["ratio_on_target"] == pytest.approx(ratio["fr"])
    assert row["mean_ratio_others"] == pytest.approx((ratio["en"] + ratio["zh"]) / 2)
    assert row["max_ratio_others"] == pytest.approx(ratio["en"]) and row["worst_other_language"] == "en"
    assert row["selectivity"] == pytest.approx(ratio["fr"] / ((ratio["en"] + ratio["zh"]) / 2))
    assert row["random_ratio"] == pytest.approx(math.exp(0.02))
    assert row["random_max_ratio"] == pytest.approx(math.exp(0.02))
    assert row["random_selectivity"] == pytest.approx(1.0)
    assert (row["rule"], row["n_neurons"], row["n_docs"], row["n_control_seeds"]) == ("specific", 5, 4, 1)
    for name in ("ratio_on_target", "selectivity", "mean_ratio_others"):
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"]


def test_summary_intervals_are_a_joint_document_bootstrap():
    rng = np.random.default_rng(3)
    n = 15
    tokens = {lang: rng.integers(5, 40, n).tolist() for lang in LANGUAGES}
    base = {lang: [t * rng.uniform(1.5, 3.0) for t in tokens[lang]] for lang in LANGUAGES}
    real = {lang: [b + t * rng.uniform(0.0, 0.8) for b, t in zip(base[lang], tokens[lang])] for lang in LANGUAGES}
    rows = _rows("none", "none", -1, base, tokens, n_neurons=0) + _rows("fr", "real", -1, real, tokens)
    table = summarise_selectivity(pd.DataFrame(rows)[list(CELL_COLUMNS)], n_resamples=300, seed=7)
    # reference: resample document positions, the same positions for every language and for base and real
    draws = np.random.default_rng(7).integers(0, n, size=(300, n))
    stats = []
    for picked in draws:
        r = {
            lang: _perplexity([real[lang][i] for i in picked], [tokens[lang][i] for i in picked])
            / _perplexity([base[lang][i] for i in picked], [tokens[lang][i] for i in picked])
            for lang in LANGUAGES
        }
        stats.append(r["fr"] / ((r["en"] + r["zh"]) / 2))
    low, high = np.percentile(stats, [2.5, 97.5])
    assert table.iloc[0]["selectivity_low"] == pytest.approx(low, rel=1e-9)
    assert table.iloc[0]["selectivity_high"] == pytest.approx(high, rel=1e-9)
    assert high > low, "the documents differ, so the interval has a width"


def test_summary_does_not_depend_on_row_order(hand_made):
    cells = hand_made[0]
    shuffled = cells.sample(frac=1.0, random_state=0).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        summarise_selectivity(cells, n_resamples=50), summarise_selectivity(shuffled, n_resamples=50)
    )


def test_summary_without_controls_has_no_random_ratio(hand_made):
    cells = hand_made[0]
    table = summarise_selectivity(cells[cells["control"] != "random"], n_resamples=20)
    assert table.iloc[0]["n_control_seeds"] == 0 and math.isnan(table.iloc[0]["random_ratio"])


def _table(rows):
    base = {"method": "paper", "top_k": "0.25", "mean_ratio_others": 1.0}
    return pd.DataFrame([base | row for row in rows])


def test_best_rules_per_language_and_overall():
    rows = [
        # en: only "b" meets the whole goal, though "a" is more selective
        dict(set_kind="a", target_language="en", ratio_on_target=3.0, selectivity=3.0, random_ratio=1.2),
        dict(set_kind="b", target_language="en", ratio_on_target=1.3, selectivity=1.6, random_ratio=1.0),
        # fr: nothing meets the goal; "a" meets two criteria, "b" one
        dict(set_kind="a", target_language="fr", ratio_on_target=1.3, selectivity=1.4, random_ratio=1.0),
        dict(set_kind="b", target_language="fr", ratio_on_target=1.1, selectivity=2.0, random_ratio=1.2),
    ]
    best = best_rules(_table(rows), GOAL).set_index("target_language")
    assert best.loc["en", "set_kind"] == "b" and bool(best.loc["en", "meets_goal"])
    assert best.loc["fr", "set_kind"] == "a" and not best.loc["fr", "meets_goal"]
    assert best.loc["fr", "n_criteria"] == 2
    # overall: "b" meets the goal in one language, "a" in none
    assert best.loc["all", "set_kind"] == "b" and best.loc["all", "n_languages_meeting"] == 1
    assert not best.loc["all", "meets_goal"]
    assert best.loc["all", "selectivity"] == pytest.approx(math.sqrt(1.6 * 2.0))


def test_pareto_front_matches_the_definition():
    rng = np.random.default_rng(0)
    damage, effect = rng.uniform(1, 2, 40).round(1), rng.uniform(1, 3, 40).round(1)  # rounding makes ties
    damage[3] = np.nan
    front = pareto_front(damage, effect)
    for i in range(len(damage)):
        beaten = any(
            damage[j] <= damage[i] and effect[j] >= effect[i] and (damage[j] < damage[i] or effect[j] > effect[i])
            for j in range(len(damage))
            if j != i and not np.isnan(damage[j])
        )
        # of equal points only one is kept
        duplicate_first = any(
            damage[j] == damage[i] and effect[j] == effect[i] and front[j] for j in range(len(damage)) if j != i
        )
        expected = not np.isnan(damage[i]) and not beaten and not duplicate_first
        assert front[i] == expected, (i, damage[i], effect[i])


@pytest.mark.parametrize("value, label", [(0.25, "0.25"), (0.1, "0.1"), (64, "64"), (1, "1"), (0.5, "0.5")])
def test_top_k_labels_round_trip(value, label):
    assert top_k_label(value) == label and parse_top_k_label(label) == value


@pytest.mark.parametrize("value", [0, -0.1, 2.5, True, "0.25"])
def test_bad_top_k_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match="selectivity.top_k"):
        top_k_label(value)


def test_non_canonical_top_k_label_is_refused():
    with pytest.raises(ConfigError, match="'0.25'"):
        parse_top_k_label("0.250")


def _counts(values, n_docs=4):
    tensor = torch.tensor(values, dtype=torch.int64).reshape(2, 8)  # [layers, neurons]
    return ActivationCounts({"ffn": tensor}, {"ffn": tensor.double()}, n_docs, {"ffn": 2})


def test_cell_sets_builds_the_rule_from_the_counts(tmp_path):
    # neuron (0, 0): fr 4/4 only; (0, 1): fr 4/4 and en 4/4; (1, 7): all three 4/4
    counts = {lang: [0] * 16 for lang in LANGUAGES}
    counts["fr"][0] = counts["fr"][1] = counts["en"][1] = 4
    for lang in LANGUAGES:
        counts[lang][15] = 4
    paths = {}
    for lang in LANGUAGES:
        _counts(counts[lang]).save(tmp_path / f"{lang}.safetensors")
        paths[lang] = str(tmp_path / f"{lang}.safetensors")
    def keys(table, lang):
        return sorted(
            zip(table.loc[table["language"] == lang, "layer"], table.loc[table["language"] == lang, "index"])
        )
    exclusive = cell_sets(paths, 1.0, "shared_by_at_most-1")
    assert keys(exclusive, "fr") == [(0, 0)] and keys(exclusive, "en") == [] and keys(exclusive, "zh") == []
    two = cell_sets(paths, 1.0, "shared_by_at_most-2")
    assert keys(two, "fr") == [(0, 0), (0, 1)] and keys(two, "en") == [(0, 1)]


def test_measure_sets_equals_zeroed_weights_one_set_after_another():
    model, tokenizer = tiny_model("llama"), word_tokenizer()
    rng = np.random.default_rng(0)
    docs = {
        lang: [" ".join(f"w{w}" for w in rng.integers(3, VOCAB, size=int(n))) for n in rng.integers(5, 14, size=3)]
        for lang in ("en", "fr")
    }
    neurons = pd.DataFrame(
        {"language": ["fr"] * 3 + ["en"] * 2, "set_kind": "specific", "layer": [0, 1, 1, 0, 0],
         "site": ["ffn", "ffn", "attn_q", "attn_v", "ffn"], "index": [2, 5, 1, 0, 7]}
    )  # fmt: skip
    settings = {"max_length": 32, "batch_size": 2}
    table = measure_sets(model, tokenizer, neurons, "specific", ["fr", "en"], [4], docs, settings)

    def zeroed_nll(deactivated):
        copied = copy.deepcopy(model)
        if len(deactivated):
            zero_weights_(copied, deactivated)
        return {
            lang: document_nll(copied, tokenizer, texts, max_length=32, batch_size=3, progress=False)["nll"].to_numpy()
            for lang, texts in docs.items()
        }

    from langneurons.architectures import site_sizes

    sizes = site_sizes(model)
    for target, control in itertools.product(["fr", "en"], ["real", "random"]):
        chosen = neurons[neurons["language"] == target]
        if control == "random":
            chosen = NeuronSet(chosen, NeuronSpace(model.config.num_hidden_layers, sizes)).random_control(4).table
        expected = zeroed_nll(chosen)
        got = table[(table["target_language"] == target) & (table["control"] == control)]
        assert set(got["n_neurons"]) == {len(chosen)}
        for lang in docs:
            np.testing.assert_allclose(got[got["eval_language"] == lang]["nll"], expected[lang], rtol=1e-5, atol=1e-5)
    baseline = table[table["control"] == "none"]
    for lang, values in zeroed_nll(neurons.iloc[:0]).items():
        np.testing.assert_allclose(baseline[baseline["eval_language"] == lang]["nll"], values, rtol=1e-5, atol=1e-5)
    # the real sets changed the NLLs (otherwise the comparison above proves nothing), and no hook stayed behind
    real_fr = table[(table["target_language"] == "fr") & (table["control"] == "real")]
    assert not np.allclose(real_fr["nll"].to_numpy(), baseline["nll"].to_numpy())
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


def test_an_empty_set_gives_the_baseline_and_no_control():
    model, tokenizer = tiny_model("llama"), word_tokenizer()
    docs = {"en": ["w5 w6 w7 w8"], "fr": ["w9 w10 w11"]}
    empty = pd.DataFrame(columns=["language", "set_kind", "layer", "site", "index"])
    table = measure_sets(model, tokenizer, empty, "exclusive", ["fr"], [0], docs, {"max_length": 16, "batch_size": 1})
    base = table[table["control"] == "none"].reset_index(drop=True)
    for control in ("real", "random"):
        rows = table[table["control"] == control].reset_index(drop=True)
        assert (rows["n_neurons"] == 0).all()
        np.testing.assert_array_equal(rows["nll"], base["nll"])


def test_selectivity_points_are_geometric_means_with_the_front_marked():
    table = pd.DataFrame(
        [
            {"method": "paper", "top_k": "0.25", "set_kind": "specific", "target_language": "en",
             "ratio_on_target": 4.0, "mean_ratio_others": 2.0},
            {"method": "paper", "top_k": "0.25", "set_kind": "specific", "target_language": "fr",
             "ratio_on_target": 1.0, "mean_ratio_others": 2.0},
            {"method": "paper", "top_k": "0.25", "set_kind": "exclusive", "target_language": "en",
             "ratio_on_target": 1.5, "mean_ratio_others": 1.0},
            {"method": "paper", "top_k": "0.25", "set_kind": "exclusive", "target_language": "fr",
             "ratio_on_target": 1.5, "mean_ratio_others": 1.0},
            {"method": "paper", "top_k": "0.1", "set_kind": "exclusive", "target_language": "en",
             "ratio_on_target": 1.2, "mean_ratio_others": 1.1},
            {"method": "paper", "top_k": "0.1", "set_kind": "exclusive", "target_language": "fr",
             "ratio_on_target": 1.2, "mean_ratio_others": 1.1},
        ]
    )  # fmt: skip
    points = selectivity_points(table).set_index(["top_k", "set_kind"])
    assert points.loc[("0.25", "specific"), "effect"] == pytest.approx(2.0)  # sqrt(4 * 1)
    assert points.loc[("0.25", "specific"), "damage"] == pytest.approx(2.0)
    # exclusive at 0.25 beats exclusive at 0.1 on both axes; specific has the larger effect
    assert points["on_front"].to_dict() == {
        ("0.1", "exclusive"): False, ("0.25", "exclusive"): True, ("0.25", "specific"): True,
    }  # fmt: skip
    assert selectivity_points(table, "en").set_index(["top_k", "set_kind"]).loc[("0.25", "specific"), "effect"] == 4.0
    figure = selectivity_frontier_figure(table, goal=GOAL)
    assert len([ax for ax in figure.axes if ax.get_visible()]) == 3  # overall + en + fr


def test_languages_with_different_eval_document_counts_are_refused(tmp_path):
    from langneurons.io import write_parquet_atomic
    from langneurons.steps.selectivity import eval_documents

    paths = {}
    for lang, n in (("en", 5), ("fr", 3)):
        docs = pd.DataFrame({"doc_id": [f"{lang}{i}" for i in range(n)], "split": "eval", "text": "w5 w6"})
        paths[lang] = str(write_parquet_atomic(docs, tmp_path / f"{lang}.parquet"))
    assert {lang: len(texts) for lang, texts in eval_documents(paths, 3).items()} == {"en": 3, "fr": 3}
    with pytest.raises(ConfigError, match=r"\{'en': 4, 'fr': 3\}: lower evaluation.n_docs to 3"):
        eval_documents(paths, 4)
