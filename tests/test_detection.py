"""langneurons.detect: documents in, checked neuron sets out, against a reference built from the raw scores."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from models import VOCAB, tiny_model, word_tokenizer

import langneurons
from langneurons.neuronset import SITES, NeuronSpace
from langneurons.scoring import score_documents
from langneurons.selection import SelectionError, lape_neurons

#: Each language draws its words from its own part of the vocabulary (with some overlap).
RANGES = {"en": (3, 60), "fr": (20, 80), "zh": (40, VOCAB)}
TOP_K = {"ffn": 0.1, "attn_q": 3, "attn_k": 0.25, "attn_v": 2}


def _docs(language: str, n: int, seed: int) -> list[str]:
    gen = np.random.default_rng(seed)
    low, high = RANGES[language]
    return [" ".join(f"w{w}" for w in gen.integers(low, high, int(gen.integers(4, 14)))) for _ in range(n)]


def _corpus(n: int = 7) -> dict[str, list[str]]:
    return {language: _docs(language, n, seed) for seed, language in enumerate(RANGES)}


def _reference_sets(model, tokenizer, corpus, top_k, rho) -> dict[str, dict[str, set]]:
    """``{kind: {language: {(layer, site, index)}}}`` from the scores, with NumPy sorting and Python sets."""
    activated = {}
    sizes = langneurons.site_sizes(model)
    for language, texts in corpus.items():
        scores = score_documents(model, tokenizer, texts, batch_size=len(texts), progress=False)
        keep = set()
        for site in SITES:
            k = math.ceil(top_k[site] * sizes[site]) if top_k[site] < 1 else top_k[site]
            values = scores[site].numpy()  # [docs, layers, neurons]
            ranked = np.sort(values, axis=-1)[..., ::-1]
            assert (ranked[..., k - 1] > ranked[..., k]).all(), "a tie at the top-k boundary makes the reference moot"
            counts = np.zeros(values.shape[1:], dtype=int)
            for doc in values:
                for layer, row in enumerate(doc):
                    counts[layer, np.argsort(-row)[:k]] += 1
            needed = math.ceil(rho * len(texts))
            keep |= {(layer, site, index) for layer, index in zip(*np.nonzero(counts >= needed))}
        activated[language] = {(int(layer), site, int(index)) for layer, site, index in keep}
    everywhere = set.intersection(*activated.values())
    others = {lang: set().union(*(s for o, s in activated.items() if o != lang)) for lang in activated}
    return {
        "activated": activated,
        "specific": {lang: s - everywhere for lang, s in activated.items()},
        "exclusive": {lang: s - others[lang] for lang, s in activated.items()},
    }


def _found(neuron_set, kind: str) -> dict[str, set]:
    table = neuron_set.select(set_kind=kind).table
    return {
        lang: set(zip(rows["layer"].tolist(), rows["site"].tolist(), rows["index"].tolist()))
        for lang, rows in table.groupby("language")
    }


def test_detect_finds_the_sets_a_reference_builds_from_the_scores():
    model, tokenizer, corpus = tiny_model("llama"), word_tokenizer(), _corpus()
    kinds = ("activated", "specific", "exclusive")
    sets = langneurons.detect(
        model, tokenizer, corpus, top_k=TOP_K, rho=0.5, set_kinds=kinds, batch_size=2, chunk_docs=3, progress=False
    )
    reference = _reference_sets(model, tokenizer, corpus, TOP_K, rho=0.5)
    for kind in kinds:
        found = _found(sets, kind)
        assert {lang: found.get(lang, set()) for lang in corpus} == reference[kind], kind
    assert reference["specific"] != reference["activated"] and any(reference["exclusive"].values())
    assert sets.space == NeuronSpace.of(model)


def test_detect_does_not_depend_on_batching_and_carries_its_documents_and_parameters():
    model, tokenizer, corpus = tiny_model("qwen2"), word_tokenizer(), _corpus(5)
    tables = {
        "en": pd.DataFrame({"doc_id": [f"en:{i}" for i in range(5)], "text": corpus["en"], "split": "detect"}),
        "fr": {f"fr-{i}": text for i, text in enumerate(corpus["fr"])},
        "zh": corpus["zh"],
    }
    one_at_a_time = langneurons.detect(
        model, tokenizer, tables, top_k=4, rho=0.6, batch_size=1, chunk_docs=1, progress=False
    )
    all_at_once = langneurons.detect(
        model, tokenizer, tables, top_k=4, rho=0.6, batch_size=8, chunk_docs=100, progress=False
    )
    # the same sets; mean importances agree to float32 rounding (their sums run in another order)
    pd.testing.assert_frame_equal(one_at_a_time.table, all_at_once.table, check_exact=False, rtol=1e-5)
    assert one_at_a_time.params == all_at_once.params and one_at_a_time.doc_ids == all_at_once.doc_ids
    assert one_at_a_time.doc_ids == {
        "en": [f"en:{i}" for i in range(5)], "fr": [f"fr-{i}" for i in range(5)], "zh": list(range(5))
    }  # fmt: skip
    params = one_at_a_time.params
    assert params["rho"] == 0.6 and params["top_k"] == {site: 4 for site in SITES}
    assert params["set_kinds"] == ["specific"] and params["n_docs"] == {"en": 5, "fr": 5, "zh": 5}
    assert params["method"] == "paper" and params["max_length"] == 512
    assert one_at_a_time.set_kinds == ["specific"]
    assert one_at_a_time.by_language()["fr"].doc_ids == {"fr": [f"fr-{i}" for i in range(5)]}


def test_detect_adds_lapes_sets_from_the_same_pass():
    model, tokenizer, corpus = tiny_model("llama"), word_tokenizer(), _corpus(6)
    options = {"entropy_quantile": 0.2, "filter_rate": 0.5, "activation_bar_ratio": 0.5}
    sets = langneurons.detect(model, tokenizer, corpus, top_k=3, rho=1.0, lape=options, chunk_docs=4, progress=False)
    active, tokens = {}, {}
    for language, texts in corpus.items():
        scores = score_documents(model, tokenizer, texts, sites=("ffn_active", "n_tokens"), progress=False)
        active[language] = scores["ffn_active"].sum(dim=0).round().to(torch.int64)
        tokens[language] = int(scores["n_tokens"].sum())
    expected = lape_neurons(active, tokens, **options)
    assert len(expected) > 0
    pd.testing.assert_frame_equal(sets.select(set_kind="lape").table, expected)
    assert sets.set_kinds == ["lape", "specific"] and sets.params["lape"] == options


def test_detect_shows_its_progress(capsys):
    langneurons.detect(tiny_model("llama"), word_tokenizer(), _corpus(3), top_k=3, rho=1.0, chunk_docs=2)
    assert "9/9" in capsys.readouterr().err


@pytest.mark.parametrize(
    "documents, options, message",
    [
        ({}, {}, "documents must map each language"),
        ({"fr": []}, {}, r"documents\['fr'\] is empty"),
        ({"fr": pd.DataFrame({"text": ["w3 w4"]})}, {}, r"documents\['fr'\] is a table without column\(s\) \['doc_id"),
        ({"fr": ["w3 w4", "  "]}, {}, r"documents\['fr'\] has document 1 without text"),
        ({"fr": "w3 w4"}, {}, r"documents\['fr'\] is a str"),
        ({"fr": ["w3 w4"]}, {"top_k": {"ffn": 2}}, r"top_k has no value for site\(s\) \['attn_q'"),
        ({"fr": ["w3 w4"]}, {"sites": ["mlp"]}, r"sites \['mlp'\] are unknown"),
        ({"fr": ["w3 w4"]}, {"chunk_docs": 0}, "chunk_docs=0"),
    ],
)
def test_detect_names_bad_input(documents, options, message):
    with pytest.raises(SelectionError, match=message):
        langneurons.detect(tiny_model("llama"), word_tokenizer(), documents, **{"top_k": 2, "rho": 1.0, **options})
