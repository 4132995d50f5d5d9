import itertools

import pytest
import torch

from langneurons.selection import (
    ActivationCounts,
    SelectionError,
    merge_counts,
    neuron_sets,
    resolve_top_k,
    top_k_mask,
)


def test_top_k_mask_matches_a_per_row_loop():
    scores = torch.randn(5, 3, 40, generator=torch.Generator().manual_seed(0))
    mask = top_k_mask(scores, 7)
    for doc, layer in itertools.product(range(5), range(3)):
        expected = set(sorted(range(40), key=lambda i: -scores[doc, layer, i].item())[:7])
        assert set(mask[doc, layer].nonzero().flatten().tolist()) == expected


@pytest.mark.parametrize("top_k, size, expected", [(0.25, 40, 10), (0.26, 40, 11), (5, 40, 5), (1, 8, 1)])
def test_top_k_as_fraction_or_count(top_k, size, expected):
    assert resolve_top_k(top_k, size) == expected


@pytest.mark.parametrize("top_k, message", [(0, "count >= 1 or a fraction"), (41, "only 40"), (2.5, "whole number")])
def test_bad_top_k_is_named(top_k, message):
    with pytest.raises(SelectionError, match=message):
        resolve_top_k(top_k, 40, "ffn")


def _scores(n_docs, seed):
    gen = torch.Generator().manual_seed(seed)
    return {"ffn": torch.rand(n_docs, 2, 30, generator=gen), "attn_q": torch.rand(n_docs, 2, 16, generator=gen)}


def test_shards_merge_exactly():
    scores = _scores(12, 1)
    top_k = {"ffn": 0.2, "attn_q": 4}
    whole = ActivationCounts.from_scores(scores, top_k)
    shards = [ActivationCounts.from_scores({s: t[i::3] for s, t in scores.items()}, top_k) for i in range(3)]
    merged = merge_counts(shards)
    assert merged.n_docs == 12
    for site in scores:
        assert torch.equal(merged.counts[site], whole.counts[site])
        torch.testing.assert_close(merged.mean_importance(site), whole.mean_importance(site))


def test_counts_count_documents_in_the_top_k():
    scores = _scores(6, 2)
    counts = ActivationCounts.from_scores(scores, {"ffn": 5, "attn_q": 3})
    assert torch.equal(counts.counts["ffn"], top_k_mask(scores["ffn"], 5).sum(0))
    assert counts.counts["ffn"].sum() == 6 * 2 * 5
    assert torch.equal(counts.activated("ffn", 1.0), counts.counts["ffn"] == 6)
    assert torch.equal(counts.activated("ffn", 0.5), counts.counts["ffn"] >= 3)


def test_save_and_load_round_trip(tmp_path):
    counts = ActivationCounts.from_scores(_scores(4, 3), {"ffn": 5, "attn_q": 3})
    counts.save(tmp_path / "c.safetensors", {"language": "fr"})
    loaded = ActivationCounts.load(tmp_path / "c.safetensors")
    assert loaded.n_docs == 4 and loaded.top_k == counts.top_k
    for site in counts.counts:
        assert torch.equal(loaded.counts[site], counts.counts[site])


def _counts_from_sets(sets: dict[str, set[int]], n_docs: int = 4) -> ActivationCounts:
    """One layer of 10 ffn neurons; neurons in the set are active in every document, others in one."""
    counts = torch.ones(1, 10, dtype=torch.int64)
    for i in sets["ffn"]:
        counts[0, i] = n_docs
    return ActivationCounts({"ffn": counts}, {"ffn": counts.double()}, n_docs, {"ffn": 3})


def test_neuron_sets_follow_set_algebra():
    active = {"en": {0, 1, 2, 3}, "fr": {0, 1, 4, 5}, "zh": {0, 1, 2, 6, 7}}
    table = neuron_sets({lang: _counts_from_sets({"ffn": s}) for lang, s in active.items()}, rho=1.0)
    everyone = set.intersection(*active.values())
    for lang, own in active.items():
        others = set.union(*(s for other, s in active.items() if other != lang))
        rows = table[table["language"] == lang]
        got = {kind: set(rows[rows["set_kind"] == kind]["index"]) for kind in ("activated", "specific", "exclusive")}
        assert got == {"activated": own, "specific": own - everyone, "exclusive": own - others}
    assert list(table.columns) == ["language", "set_kind", "layer", "site", "index", "frequency", "mean_importance"]


def test_rho_below_one_admits_frequent_neurons():
    counts = _counts_from_sets({"ffn": {0}}, n_docs=4)
    counts.counts["ffn"][0, 1] = 3
    table = neuron_sets({"en": counts, "fr": _counts_from_sets({"ffn": set()})}, rho=0.75, kinds=["activated"])
    assert set(table.query("language == 'en'")["index"]) == {0, 1}
    with pytest.raises(SelectionError, match="rho is 0"):
        neuron_sets({"en": counts, "fr": counts}, rho=0)


def test_specific_sets_need_two_languages():
    with pytest.raises(SelectionError, match="at least two languages"):
        neuron_sets({"en": _counts_from_sets({"ffn": {1}})}, rho=1.0)
