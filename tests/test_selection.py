import itertools
import re
from fractions import Fraction

import pytest
import torch
from set_rules import reference_sets

from langneurons.selection import (
    SET_KIND_PATTERN,
    SET_KINDS,
    ActivationCounts,
    SelectionError,
    SetRule,
    merge_counts,
    neuron_sets,
    parse_set_kind,
    resolve_top_k,
    set_kind_name,
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


# ---- set kinds with parameters -----------------------------------------------------------------


def _counts_table(table: dict[str, list[int]], n_docs: dict[str, int]) -> dict[str, ActivationCounts]:
    """One layer of ffn neurons; ``table[lang][i]`` documents of ``lang`` have neuron i in their top-k."""
    per_language = {}
    for lang, row in table.items():
        counts = torch.tensor([row], dtype=torch.int64)
        per_language[lang] = ActivationCounts({"ffn": counts}, {"ffn": counts.double()}, n_docs[lang], {"ffn": 1})
    return per_language


def _indices(table, lang: str, kind: str) -> set[int]:
    return set(table.loc[(table["language"] == lang) & (table["set_kind"] == kind), "index"])


#: Documents (of 10, 10 and 5) with each of 9 neurons in their top-k; with rho = 0.6 a neuron is activated
#: for en and fr from 6 documents, for zh from 3.  Frequencies (en, fr, zh):
#: n0 (1, 1, 1), n1 (1, .7, 0), n2 (.7, .4, 0), n3 (1, 0, .4), n4 (0, .6, .6), n5 (.2, .2, .8), n6 (.5, .5, .4),
#: n7 (1, 1, 0), n8 (1, 0, 0).
HAND = {"en": [10, 10, 7, 10, 0, 2, 5, 10, 10], "fr": [10, 7, 4, 0, 6, 2, 5, 10, 0], "zh": [5, 0, 0, 2, 3, 4, 2, 0, 0]}
HAND_DOCS = {"en": 10, "fr": 10, "zh": 5}
#: Worked out by hand from the frequencies above.
HAND_SETS = {
    "activated": {"en": {0, 1, 2, 3, 7, 8}, "fr": {0, 1, 4, 7}, "zh": {0, 4, 5}},
    "specific": {"en": {1, 2, 3, 7, 8}, "fr": {1, 4, 7}, "zh": {4, 5}},
    "exclusive": {"en": {2, 3, 8}, "fr": set(), "zh": {5}},
    "shared_by_at_most-1": {"en": {2, 3, 8}, "fr": set(), "zh": {5}},
    "shared_by_at_most-2": {"en": {1, 2, 3, 7, 8}, "fr": {1, 4, 7}, "zh": {4, 5}},
    "shared_by_at_most-3": {"en": {0, 1, 2, 3, 7, 8}, "fr": {0, 1, 4, 7}, "zh": {0, 4, 5}},
    # n2: .7 - .4 is exactly .3 (in floats 0.29999999999999993); n1: 1 - .7 = .3; n4: fr and zh tie
    "contrast-0": {"en": {0, 1, 2, 3, 7, 8}, "fr": {0, 4, 7}, "zh": {0, 4, 5}},
    "contrast-0.3": {"en": {1, 2, 3, 8}, "fr": set(), "zh": {5}},
    "contrast-0.31": {"en": {3, 8}, "fr": set(), "zh": {5}},
    "contrast-0.6": {"en": {3, 8}, "fr": set(), "zh": {5}},
    "contrast-1": {"en": {8}, "fr": set(), "zh": set()},
    # normalised entropies: n8 0, n3 .545, n2 .597, n1 .616, n4 = n7 = ln 2 / ln 3 = .631, n5 .789, n0 1
    "entropy-0": {"en": {8}, "fr": set(), "zh": set()},
    "entropy-0.6": {"en": {2, 3, 8}, "fr": set(), "zh": set()},
    "entropy-0.7": {"en": {1, 2, 3, 7, 8}, "fr": {1, 4, 7}, "zh": {4}},
    "entropy-1": {"en": {0, 1, 2, 3, 7, 8}, "fr": {0, 1, 4, 7}, "zh": {0, 4, 5}},
}


@pytest.mark.parametrize("kind", sorted(HAND_SETS))
def test_set_kinds_on_a_hand_made_table(kind):
    table = neuron_sets(_counts_table(HAND, HAND_DOCS), rho=0.6, kinds=[kind])
    assert set(table["set_kind"]) <= {kind}
    assert {lang: _indices(table, lang, kind) for lang in HAND} == HAND_SETS[kind]


def test_reference_agrees_with_the_hand_made_table():
    """The brute-force reference used below reproduces the hand-worked sets."""
    counts = {lang: dict(enumerate(row)) for lang, row in HAND.items()}
    for kind, expected in HAND_SETS.items():
        assert reference_sets(counts, HAND_DOCS, 0.6, kind) == expected, kind


def test_entropy_threshold_is_inclusive():
    """Two of four languages always and the others never: entropy exactly ln 2 / ln 4 = 0.5."""
    table = {"a": [4, 4, 4], "b": [4, 0, 4], "c": [0, 0, 1], "d": [0, 0, 0]}
    sets = neuron_sets(_counts_table(table, dict.fromkeys(table, 4)), rho=1.0, kinds=["entropy-0.5"])
    assert _indices(sets, "a", "entropy-0.5") == {0, 1} and _indices(sets, "b", "entropy-0.5") == {0}


RULES = [
    *SET_KINDS,
    *(f"shared_by_at_most-{m}" for m in range(1, 5)),
    *(f"contrast-{d}" for d in ("0", "0.1", "0.25", "0.3", "0.5", "0.75", "1")),
    *(f"entropy-{t}" for t in ("0", "0.2", "0.4", "0.5", "0.7", "1")),
]


@pytest.mark.parametrize("seed", range(4))
def test_set_kinds_equal_a_brute_force_loop(seed):
    """Random tables with many ties at full and equal frequencies, unequal document counts, two sites."""
    gen = torch.Generator().manual_seed(seed)
    n_docs = {"de": 10, "en": 10, "fr": 5, "zh": 4}
    per_language, plain = {}, {}
    for lang, n in n_docs.items():
        tensors = {}
        for site, width in (("ffn", 30), ("attn_v", 8)):
            uniform = torch.randint(0, n + 1, (2, width), generator=gen)
            full = torch.rand(2, width, generator=gen) < 0.4
            tensors[site] = torch.where(full, torch.full_like(uniform, n), uniform)
        per_language[lang] = ActivationCounts(tensors, {s: t.double() for s, t in tensors.items()}, n, {})
        plain[lang] = {
            (layer, site, index): int(t[layer, index])
            for site, t in tensors.items()
            for layer in range(2)
            for index in range(t.shape[1])
        }
    for rho in (0.5, 0.7, 1.0):
        table = neuron_sets(per_language, rho=rho, kinds=RULES)
        found = {
            group: set(zip(rows["layer"], rows["site"], rows["index"]))
            for group, rows in table.groupby(["language", "set_kind"])
        }
        nonempty = 0
        for kind in RULES:
            expected = reference_sets(plain, n_docs, rho, kind)
            for lang in n_docs:
                got = found.get((lang, kind), set())
                assert got == expected[lang], (rho, kind, lang)
                nonempty += bool(got)
        assert nonempty > len(RULES)


def test_the_extremes_of_shared_by_at_most_are_exclusive_and_activated():
    table = neuron_sets(
        _counts_table(HAND, HAND_DOCS),
        rho=0.6,
        kinds=["shared_by_at_most-1", "shared_by_at_most-3", "exclusive", "activated"],
    )
    for lang in HAND:
        assert _indices(table, lang, "shared_by_at_most-1") == _indices(table, lang, "exclusive")
        assert _indices(table, lang, "shared_by_at_most-3") == _indices(table, lang, "activated")


def test_neuron_table_of_a_parametrised_kind_carries_frequencies():
    table = neuron_sets(_counts_table(HAND, HAND_DOCS), rho=0.6, kinds=["contrast-0.3"])
    row = table[(table["language"] == "en") & (table["index"] == 2)].iloc[0]
    assert row["set_kind"] == "contrast-0.3" and row["frequency"] == pytest.approx(0.7)
    assert row["mean_importance"] == pytest.approx(7 / 10)


@pytest.mark.parametrize(
    "name, rule",
    [
        ("specific", SetRule("specific")),
        ("shared_by_at_most-2", SetRule("shared_by_at_most", 2)),
        ("shared_by_at_most-12", SetRule("shared_by_at_most", 12)),
        ("contrast-0.3", SetRule("contrast", Fraction(3, 10))),
        ("contrast-1", SetRule("contrast", Fraction(1))),
        ("entropy-0", SetRule("entropy", Fraction(0))),
        ("entropy-0.000001", SetRule("entropy", Fraction(1, 10**6))),
    ],
)
def test_set_kind_names_parse_and_are_canonical(name, rule):
    assert parse_set_kind(name) == rule
    assert rule.name == name
    assert re.fullmatch(SET_KIND_PATTERN, name)


@pytest.mark.parametrize(
    "kind, parameter, name",
    [("contrast", 0.3, "contrast-0.3"), ("contrast", 1, "contrast-1"), ("contrast", "0.50", "contrast-0.5"),
     ("entropy", 1e-6, "entropy-0.000001"), ("shared_by_at_most", 3, "shared_by_at_most-3"),
     ("exclusive", None, "exclusive")],
)  # fmt: skip
def test_set_kind_name_builds_the_canonical_name(kind, parameter, name):
    assert set_kind_name(kind, parameter) == name


@pytest.mark.parametrize(
    "name, message",
    [
        ("contrast-0.30", "write it as 'contrast-0.3'"),
        ("shared_by_at_most-02", "write it as 'shared_by_at_most-2'"),
        ("contrast-1.5", r"'1.5' must be a decimal number in \[0, 1\]"),
        ("entropy-1e-3", r"'1e-3' must be a decimal number"),
        ("contrast-0.1234567", "more than 6 decimals"),
        ("contrast", "contrast needs a parameter"),
        ("shared_by_at_most-0", "must be a whole number >= 1"),
        ("shared_by_at_most-1.5", "must be a whole number >= 1"),
        ("specific-2", "specific takes no parameter; write 'specific'"),
        ("exclusiv", "unknown kind 'exclusiv'"),
        ("contrast:0.3", "unknown kind 'contrast:0.3'"),
    ],
)
def test_bad_set_kind_names_say_what_and_how(name, message):
    with pytest.raises(SelectionError, match=message):
        parse_set_kind(name)
    assert not re.fullmatch(SET_KIND_PATTERN, name)


def test_set_kind_name_refuses_a_float_with_too_many_digits():
    with pytest.raises(SelectionError, match="more than 6 decimals"):
        set_kind_name("contrast", 0.1 + 0.2)


def test_rules_that_cannot_apply_to_the_languages_are_refused():
    per_language = _counts_table(HAND, HAND_DOCS)
    with pytest.raises(SelectionError, match=r"only 3 .*shared_by_at_most-1 \.\. shared_by_at_most-3"):
        neuron_sets(per_language, rho=0.6, kinds=["shared_by_at_most-4"])
    with pytest.raises(SelectionError, match=r"\['contrast-0.3'\] compare languages"):
        neuron_sets({"en": per_language["en"]}, rho=0.6, kinds=["activated", "contrast-0.3"])
    with pytest.raises(SelectionError, match="unknown kind 'lape'"):
        neuron_sets(per_language, rho=0.6, kinds=["lape"])
