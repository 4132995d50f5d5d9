"""Perplexity and multiple choice (langneurons.evaluation.scoring) against brute force and known likelihoods."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from evaluation_helpers import TEXTS, brute_choice_logprob, brute_logprob, char_tokenizer
from models import tiny_model

from langneurons import evaluation as E
from langneurons.interventions import deactivate


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom", "opt", "gemma2"])
def test_perplexity_matches_brute_force_for_any_batch_and_padding(name, tok):
    model = tiny_model(name)
    max_length = 24  # truncates the long texts
    documents = [brute_logprob(model, tok(text)["input_ids"][:max_length], 1) for text in TEXTS]
    nll, n = -sum(total for total, _ in documents), sum(count for _, count in documents)
    for batch_size in (1, 2, 5):
        for side in ("left", "right"):
            result = E.perplexity(model, tok, TEXTS, max_length=max_length, batch_size=batch_size,
                                  padding_side=side, progress=False)
            assert result.n_tokens == n and result.n_docs == len(TEXTS)
            assert result.nll_sum == pytest.approx(nll, rel=1e-5)
            assert result.perplexity == pytest.approx(math.exp(nll / n), rel=1e-5)
    per_document = E.document_nll(model, tok, TEXTS, max_length=max_length, batch_size=2, progress=False)
    np.testing.assert_allclose(per_document["nll"], [-total for total, _ in documents], rtol=1e-5)
    assert per_document["n_tokens"].tolist() == [count for _, count in documents]


def test_perplexity_is_token_weighted_not_a_mean_over_documents(llama, tok):
    a = E.perplexity(llama, tok, [TEXTS[0]], progress=False)
    b = E.perplexity(llama, tok, [TEXTS[1]], progress=False)
    both = E.perplexity(llama, tok, TEXTS[:2], progress=False)
    assert both.nll_sum == pytest.approx(a.nll_sum + b.nll_sum, rel=1e-6)
    assert both.perplexity == pytest.approx(math.exp((a.nll_sum + b.nll_sum) / (a.n_tokens + b.n_tokens)), rel=1e-6)
    assert both.perplexity != pytest.approx((a.perplexity + b.perplexity) / 2, rel=1e-3)


def test_perplexity_rejects_bad_input(llama, tok):
    with pytest.raises(E.EvaluationError, match="empty"):
        E.perplexity(llama, tok, [], progress=False)
    with pytest.raises(E.EvaluationError, match="not one string"):
        E.perplexity(llama, tok, "one string", progress=False)
    with pytest.raises(E.EvaluationError, match="padding_side"):
        E.perplexity(llama, tok, TEXTS, padding_side="middle", progress=False)


def test_evaluation_runs_under_deactivation_and_restores(llama, tok):
    before = E.perplexity(llama, tok, TEXTS, progress=False).nll_sum
    neurons = [(layer, "ffn", k) for layer in range(3) for k in range(24)]
    with deactivate(llama, neurons):
        during = E.evaluate(llama, tok, "perplexity", TEXTS, "en", progress=False)
    assert during["nll_sum"] != pytest.approx(before, rel=1e-4)
    assert E.perplexity(llama, tok, TEXTS, progress=False).nll_sum == pytest.approx(before, rel=1e-7)


class BigramLM(torch.nn.Module):
    """p(next | previous) = softmax(table[previous]): every log-likelihood is known in closed form."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.embed = torch.nn.Embedding.from_pretrained(table, freeze=True)
        self.config = SimpleNamespace(max_position_embeddings=256)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.embed(input_ids))


def bigram_model(tok) -> tuple[BigramLM, torch.Tensor]:
    vocab = len(tok)
    table = torch.zeros(vocab, vocab)
    t = tok.convert_tokens_to_ids
    table[t(" "), t("c")] = 6.0  # " c..." starts likely but continues at chance
    table[t("a"), t("b")] = 9.0  # "abab..." continues with high probability
    table[t("b"), t("a")] = 9.0
    return BigramLM(table), table.log_softmax(-1)


def test_choice_scores_equal_known_bigram_likelihoods(tok):
    model, logp = bigram_model(tok)
    contexts = ["xy", "hello there"]
    choices = [[" cd", " abababab"], [" a", " c", " ab"]]
    sums, counts = E.score_continuations(model, tok, contexts, choices, batch_size=2, padding_side="left",
                                         progress=False)
    for context, options, item_sums, item_counts in zip(contexts, choices, sums, counts):
        for option, got, n in zip(options, item_sums, item_counts):
            prev = context[-1]
            expected = 0.0
            for ch in option:  # the first choice token is predicted from the last context token
                expected += float(logp[tok.convert_tokens_to_ids(prev), tok.convert_tokens_to_ids(ch)])
                prev = ch
            assert got == pytest.approx(expected, rel=1e-6)  # float32 logits
            assert n == len(option)


def test_sum_and_mean_normalisation_choose_differently(tok):
    model, _ = bigram_model(tok)
    result = E.multiple_choice(model, tok, ["xy"], [[" cd", " abababab"]], [1], progress=False)
    # the sum favours the short choice, the per-token mean the long, fluent one
    assert result["details"][0]["pred_sum"] == 0 and result["details"][0]["pred_mean"] == 1
    assert result["value"] == result["acc_sum"] == 0.0 and result["acc_mean"] == 1.0
    mean = E.multiple_choice(model, tok, ["xy"], [[" cd", " abababab"]], [1], normalization="mean", progress=False)
    assert mean["value"] == 1.0 and mean["chance"] == 0.5
    # identical choices tie; the lowest index wins, deterministically
    tie = E.multiple_choice(model, tok, ["xy"], [[" cd", " cd"]], [1], progress=False)
    assert tie["details"][0]["pred_sum"] == 0


def test_uniform_chance_splits_ties_evenly():
    counts = [[3, 5, 5, 5], [3, 3, 5, 5], [3, 3, 5, 5], [4, 4, 4, 4], [2, 9]]
    labels = [0, 1, 2, 3, 1]
    assert E.uniform_chance(counts, labels, "sum").tolist() == [1.0, 0.5, 0.0, 0.25, 0.0]
    assert E.uniform_chance(counts, labels, "mean").tolist() == [0.25, 0.25, 0.25, 0.25, 0.5]
    with pytest.raises(E.EvaluationError, match="normalization"):
        E.uniform_chance(counts, labels, "max")


def test_chance_level_counts_the_tokens_that_are_scored(tok):
    contexts = ["ab", "abc", "a"]
    choices = [[" c", " cd", " cde"], [" xy", " zw"], [" longer one", " short"]]
    labels = [0, 1, 0]
    # one token per character: the shortest choice wins under the sum, all tie under the mean
    assert E.chance_level(tok, contexts, choices, labels).tolist() == [1.0, 0.5, 0.0]
    assert E.chance_level(tok, contexts, choices, labels, normalization="mean").tolist() == [1 / 3, 0.5, 0.5]
    # cut at 6 tokens (<s>, the context cut, at most 4 choice tokens): " longer one" and " short" tie at 4
    assert E.chance_level(tok, contexts, choices, labels, max_length=6).tolist() == [1.0, 0.5, 0.5]
    model, _ = bigram_model(tok)
    result = E.multiple_choice(model, tok, contexts, choices, labels, max_length=6, progress=False)
    assert (result["chance"], result["chance_nominal"]) == (pytest.approx(2 / 3), pytest.approx((1 / 3 + 1) / 3))


def test_choice_scores_match_brute_force_on_a_real_model(tok):
    model = tiny_model("qwen2")
    contexts = ["Hello world. This is", "x", "A much longer text, with several words"]
    choices = [[" a test", " b", " more words here."], [" yes", " no", " 12"], [" in it.", " out", " ok"]]
    reference = [[brute_choice_logprob(model, tok, c, o) for o in opts] for c, opts in zip(contexts, choices)]
    for batch_size, side in ((1, "right"), (4, "left"), (9, "right")):
        sums, _ = E.score_continuations(model, tok, contexts, choices, batch_size=batch_size, padding_side=side,
                                        progress=False)
        for got, want in zip(sums, reference):
            np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_context_that_fits_is_never_cut_whatever_the_choice_lengths(tok):
    # 31 context tokens, choices of 9 and 17, room for 64: every choice must see the whole context
    model = tiny_model("llama")
    context, choices = "The cat sat on the mat and then", [" it slept", " it ran far away."]
    assert [len(tok(text, add_special_tokens=False)["input_ids"]) for text in [context, *choices]] == [31, 9, 17]
    reference = [brute_choice_logprob(model, tok, context, choice) for choice in choices]
    for batch_size, side in ((1, "right"), (2, "left")):
        sums, counts = E.score_continuations(model, tok, [context], [choices], max_length=64, batch_size=batch_size,
                                             padding_side=side, progress=False)  # fmt: skip
        np.testing.assert_allclose(sums[0], reference, rtol=1e-5)
        assert counts[0].tolist() == [9, 17]


def test_a_context_that_does_not_fit_is_cut_once_for_all_choices(tok):
    model = tiny_model("llama")
    context, choices = "The cat sat on the mat and then", [" it slept", " it ran far away."]
    ids = tok(context, add_special_tokens=False)["input_ids"]
    # room for 24 tokens: <s>, the longest choice (17), so the last 6 context tokens for *every* choice
    kept = [tok.bos_token_id] + ids[-6:]
    reference = [brute_logprob(model, kept + tok(c, add_special_tokens=False)["input_ids"], len(kept))[0]
                 for c in choices]  # fmt: skip
    sums, _ = E.score_continuations(model, tok, [context], [choices], max_length=24, progress=False)
    np.testing.assert_allclose(sums[0], reference, rtol=1e-5)


def test_multiple_choice_rejects_bad_items(llama, tok):
    with pytest.raises(E.EvaluationError, match="at least 2"):
        E.multiple_choice(llama, tok, ["x"], [[" a"]], [0], progress=False)
    with pytest.raises(E.EvaluationError, match="label 3"):
        E.multiple_choice(llama, tok, ["x"], [[" a", " b"]], [3], progress=False)
    with pytest.raises(E.EvaluationError, match="normalization"):
        E.multiple_choice(llama, tok, ["x"], [[" a", " b"]], [0], normalization="max", progress=False)
