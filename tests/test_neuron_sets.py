"""Neuron selection beyond the set rules: stability of the sets, the LAPE detector (NeuronSet: test_neuronset.py)."""

import pandas as pd
import pytest
import torch
from set_rules import reference_sets

from langneurons.selection import (
    ActivationCounts,
    SelectionError,
    lape_neurons,
    lape_neurons_from_counts,
    merge_counts,
    neuron_sets,
    set_stability,
    stability_draws,
)

# ---- stability ---------------------------------------------------------------------------------


def _brute_force_rule(scores, top_k, rho, subsets, kind):
    """Any set kind from python sets: per-document top-k tallies, then the plain-Python rule reference."""
    tallies, n_docs = {}, {}
    for lang, per_site in scores.items():
        docs = range(per_site["ffn"].shape[0]) if subsets[lang] is None else subsets[lang].tolist()
        tally = {}
        for doc in docs:
            for site, tensor in per_site.items():
                for layer in range(tensor.shape[1]):
                    row = tensor[doc, layer].tolist()
                    for index in sorted(range(len(row)), key=lambda i: -row[i])[: top_k[site]]:
                        tally[layer, site, index] = tally.get((layer, site, index), 0) + 1
        tallies[lang], n_docs[lang] = tally, len(docs)
    return reference_sets(tallies, n_docs, rho, kind)


def test_set_stability_equals_a_brute_force_from_python_sets():
    gen = torch.Generator().manual_seed(0)
    counts = {"en": 9, "fr": 8, "zh": 7}
    scores = {}
    for lang, n in counts.items():
        base = torch.rand(1, 2, 12, generator=gen) * 2  # a language's own neurons, plus document noise
        scores[lang] = {"ffn": base + torch.rand(n, 2, 12, generator=gen), "attn_v": torch.rand(n, 2, 6, generator=gen)}
    top_k, rho, grid = {"ffn": 4, "attn_v": 2}, 0.6, (2, 4, 8, "all")
    table = set_stability(scores, top_k, rho, n_docs_grid=grid, seed=3, replicates=3)
    draws = stability_draws(counts, grid, seed=3, replicates=3)
    assert len(table) == len(draws) * 3
    assert set(table.query("kind == 'subsample'")["n_docs"]) == {2, 4, 9, 8, 7}  # 8 > 7 docs of zh: skipped
    nontrivial = 0
    for number, draw in enumerate(draws):
        first = _brute_force_rule(scores, top_k, rho, draw["a"], "specific")
        second = _brute_force_rule(scores, top_k, rho, draw["b"], "specific")
        for i, lang in enumerate(sorted(counts)):
            row = table.iloc[number * 3 + i]
            assert (row["language"], row["kind"], row["replicate"]) == (lang, draw["kind"], draw["replicate"])
            union = first[lang] | second[lang]
            expected = len(first[lang] & second[lang]) / len(union) if union else float("nan")
            assert row["jaccard"] == pytest.approx(expected, nan_ok=True), (number, lang)
            nontrivial += 0 < expected < 1
    assert nontrivial > 10
    assert (table.query("kind == 'subsample' and n_docs == [9, 8, 7]")["jaccard"] == 1.0).all()


@pytest.mark.parametrize("kind", ["shared_by_at_most-2", "contrast-0.2", "entropy-0.6"])
def test_set_stability_of_parametrised_kinds_equals_a_brute_force(kind):
    gen = torch.Generator().manual_seed(1)
    counts = {"en": 8, "fr": 8, "zh": 6, "sw": 6}
    scores = {}
    for lang, n in counts.items():
        base = torch.rand(1, 2, 12, generator=gen) * 2
        scores[lang] = {"ffn": base + torch.rand(n, 2, 12, generator=gen), "attn_v": torch.rand(n, 2, 6, generator=gen)}
    top_k, rho = {"ffn": 4, "attn_v": 2}, 0.5
    table = set_stability(scores, top_k, rho, set_kind=kind, n_docs_grid=(3, "all"), seed=0, replicates=2)
    draws = stability_draws(counts, (3, "all"), seed=0, replicates=2)
    informative = 0
    for number, draw in enumerate(draws):
        first = _brute_force_rule(scores, top_k, rho, draw["a"], kind)
        second = _brute_force_rule(scores, top_k, rho, draw["b"], kind)
        for i, lang in enumerate(sorted(counts)):
            union = first[lang] | second[lang]
            expected = len(first[lang] & second[lang]) / len(union) if union else float("nan")
            assert table.iloc[number * 4 + i]["jaccard"] == pytest.approx(expected, nan_ok=True), (number, lang)
            informative += 0 < expected < 1
    assert informative > 3


def test_stability_draws_are_disjoint_halves_and_reproducible():
    counts = {"en": 11, "sw": 6}
    draws = stability_draws(counts, (3, 50), seed=1, replicates=4)
    halves = [d for d in draws if d["kind"] == "halves"]
    assert len(halves) == 4 and len(draws) == 8  # 50 > 6 documents: skipped
    for draw in halves:
        for lang, total in counts.items():
            a, b = set(draw["a"][lang].tolist()), set(draw["b"][lang].tolist())
            assert len(a) == len(b) == total // 2 and not a & b and max(a | b) < total
    assert halves[0]["a"]["en"].tolist() != halves[1]["a"]["en"].tolist()
    again = stability_draws({"sw": 6, "en": 11}, (3, 50), seed=1, replicates=4)
    assert all(torch.equal(x["a"]["en"], y["a"]["en"]) for x, y in zip(draws, again))


# ---- LAPE --------------------------------------------------------------------------------------


def _lape_probabilities():
    """3 languages, 2 layers x 50 units; most units are active 10% of the time in every language."""
    probs = torch.full((2, 50, 3), 0.1, dtype=torch.float64)
    probs[0, 4] = torch.tensor([0.9, 0.0, 0.0])  # entropy 0
    probs[1, 7] = torch.tensor([0.8, 0.8, 0.0])  # entropy log 2
    probs[0, 9] = torch.tensor([0.05, 0.0, 0.0])  # entropy 0 but never frequent: filtered out
    probs[1, 3] = torch.tensor([0.9, 0.5, 0.5])  # entropy ~1.04: not among the 3 lowest
    probs[0, 20] = torch.tensor([0.3, 0.2, 0.2])  # entropy ~1.08
    probs[1, 30] = torch.tensor([0.95, 0.2, 0.0])  # entropy ~0.47
    return probs


def _as_counts(probs, tokens=(1000, 2000, 4000)):
    languages = ["ar", "de", "sw"]
    active = {lang: (probs[..., i] * tokens[i]).round().long() for i, lang in enumerate(languages)}
    return active, dict(zip(languages, tokens))


def test_lape_selects_low_entropy_frequent_units():
    active, tokens = _as_counts(_lape_probabilities())
    table = lape_neurons(active, tokens, entropy_quantile=0.03)
    got = {lang: set(zip(rows["layer"], rows["index"])) for lang, rows in table.groupby("language")}
    assert got == {"ar": {(0, 4), (1, 7), (1, 30)}, "de": {(1, 7), (1, 30)}}
    assert list(table.columns) == ["language", "set_kind", "layer", "site", "index", "frequency", "mean_importance"]
    assert set(table["set_kind"]) == {"lape"} and set(table["site"]) == {"ffn"}
    ar = table[table["language"] == "ar"].set_index(["layer", "index"])["frequency"]
    assert ar[(1, 30)] == pytest.approx(0.95) and table["mean_importance"].isna().all()
    # A larger quantile reaches the higher-entropy units; the filter still keeps out unit (0, 9).
    wide = lape_neurons(active, tokens, entropy_quantile=0.05)
    assert set(zip(wide["layer"], wide["index"])) == {(0, 4), (1, 7), (1, 30), (1, 3), (0, 20)}
    # A higher bar (the 99th percentile: 0.8) leaves only probabilities above it.
    strict = lape_neurons(active, tokens, entropy_quantile=0.03, activation_bar_ratio=0.99)
    assert set(zip(strict["language"], strict["layer"], strict["index"])) == {("ar", 0, 4), ("ar", 1, 30)}


def test_lape_does_not_depend_on_language_order_and_reads_activation_counts(tmp_path):
    active, tokens = _as_counts(_lape_probabilities())
    reordered = {lang: active[lang] for lang in ["sw", "ar", "de"]}
    direct = lape_neurons(active, tokens, entropy_quantile=0.03)
    pd.testing.assert_frame_equal(lape_neurons(reordered, tokens, entropy_quantile=0.03), direct)
    stored = {}
    for lang in active:
        counts = ActivationCounts({}, {}, 5, {}, {"ffn": active[lang]}, tokens[lang])
        counts.save(tmp_path / f"{lang}.safetensors")
        stored[lang] = ActivationCounts.load(tmp_path / f"{lang}.safetensors")
        assert stored[lang].n_tokens == tokens[lang]
    pd.testing.assert_frame_equal(lape_neurons_from_counts(stored, entropy_quantile=0.03), direct)


def test_lape_rejects_bad_input():
    active, tokens = _as_counts(_lape_probabilities())
    with pytest.raises(SelectionError, match="at least two"):
        lape_neurons({"ar": active["ar"]}, {"ar": 1000})
    with pytest.raises(SelectionError, match="must lie in 0..1000"):
        lape_neurons(active | {"ar": active["ar"] + 2000}, tokens)
    with pytest.raises(SelectionError, match="filter_rate"):
        lape_neurons(active, tokens, filter_rate=1.5)


def test_activation_counts_carry_lape_counts_through_merge_and_files(tmp_path):
    gen = torch.Generator().manual_seed(2)
    scores = {
        "ffn": torch.rand(6, 2, 10, generator=gen),
        "ffn_active": torch.randint(0, 9, (6, 2, 10), generator=gen).float(),
        "n_tokens": torch.full((6,), 9),
    }
    whole = ActivationCounts.from_scores(scores, {"ffn": 3})
    assert set(whole.counts) == {"ffn"} and whole.n_tokens == 54
    assert torch.equal(whole.active_tokens["ffn"], scores["ffn_active"].sum(0).long())
    shards = [ActivationCounts.from_scores({s: t[i::2] for s, t in scores.items()}, {"ffn": 3}) for i in range(2)]
    merged = merge_counts(shards)
    merged.save(tmp_path / "c.safetensors")
    loaded = ActivationCounts.load(tmp_path / "c.safetensors")
    assert loaded.n_tokens == 54 and torch.equal(loaded.active_tokens["ffn"], whole.active_tokens["ffn"])
    torch.testing.assert_close(loaded.activation_probability(), whole.active_tokens["ffn"].double() / 54)
    plain = ActivationCounts.from_scores({"ffn": scores["ffn"]}, {"ffn": 3})
    plain.save(tmp_path / "plain.safetensors")
    old = ActivationCounts.load(tmp_path / "plain.safetensors")
    assert old.active_tokens is None and old.n_tokens is None
    with pytest.raises(SelectionError, match="with and without LAPE"):
        merge_counts([whole, plain])
    with pytest.raises(SelectionError, match="no LAPE active-token counts"):
        plain.activation_probability()
    with pytest.raises(SelectionError, match="need both"):
        ActivationCounts.from_scores({"ffn": scores["ffn"], "ffn_active": scores["ffn_active"]}, {"ffn": 3})
    with_lape = neuron_sets({"a": loaded, "b": plain}, rho=0.5, kinds=["activated"])
    pd.testing.assert_frame_equal(with_lape, neuron_sets({"a": plain, "b": plain}, rho=0.5, kinds=["activated"]))


def test_lape_output_names_match_the_scoring_outputs():
    from langneurons.scoring import COUNT_OUTPUTS
    from langneurons.selection import LAPE_OUTPUTS

    assert COUNT_OUTPUTS == LAPE_OUTPUTS
