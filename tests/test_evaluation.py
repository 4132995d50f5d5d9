"""Tests of the evaluation harness (langneurons.evaluation).

Every score is checked against an independent computation: a brute-force
one-document-at-a-time loop over the model's logits, a fake bigram model
whose log-likelihoods are known, hand-computed F1/ROUGE/number examples, or
fixed generations substituted for the model's. Batched results must not
depend on batch size or padding side. Benchmark loaders read small fixtures
written here in each dataset's format (never ../shared).
"""

from __future__ import annotations

import csv
import json
import math
import string
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from models import tiny_model

from langneurons import evaluation as E
from langneurons.interventions import deactivate

# --------------------------------------------------------------------------
# fixtures: a character tokenizer that fits the tiny models' 97-token vocabulary
# --------------------------------------------------------------------------

CHARS = string.ascii_lowercase + string.ascii_uppercase + string.digits + " .,?!:'\n-$" + "的是一不了我爱在北京"


def char_tokenizer():
    """One token per character, ``<s>`` prepended like Llama tokenizers; decodes losslessly."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + list(CHARS))}
    assert len(vocab) <= 97
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


TEXTS = [
    "Hello world. This is a test of things.",
    "Short",
    "A much longer text, with several words in it, to pad the others: yes! And more words here.",
    "x y z",
    "我爱北京. 北京是一",
]


# --------------------------------------------------------------------------
# brute force references: one sequence at a time, straight from the logits
# --------------------------------------------------------------------------


def brute_logprob(model, ids: list[int], start: int) -> tuple[float, int]:
    """Sum of log p(ids[t] | ids[:t]) for t >= start, one unpadded sequence."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = logits.log_softmax(-1)
    total = sum(float(logprobs[t - 1, ids[t]]) for t in range(max(1, start), len(ids)))
    return total, len(ids) - max(1, start)


def brute_choice_logprob(model, tok, context: str, choice: str) -> float:
    ctx = tok(context)["input_ids"]  # <s> + context
    return brute_logprob(model, ctx + tok(choice, add_special_tokens=False)["input_ids"], len(ctx))[0]


# --------------------------------------------------------------------------
# 1. perplexity
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom", "opt", "gemma2"])
def test_perplexity_matches_brute_force_for_any_batch_and_padding(name, tok):
    model = tiny_model(name)
    max_length = 24  # truncates the long texts
    nll, n = 0.0, 0
    for text in TEXTS:
        total, count = brute_logprob(model, tok(text)["input_ids"][:max_length], 1)
        nll, n = nll - total, n + count
    for batch_size in (1, 2, 5):
        for side in ("left", "right"):
            result = E.perplexity(model, tok, TEXTS, max_length=max_length, batch_size=batch_size,
                                  padding_side=side, progress=False)
            assert result.n_tokens == n and result.n_docs == len(TEXTS)
            assert result.nll_sum == pytest.approx(nll, rel=1e-5)
            assert result.perplexity == pytest.approx(math.exp(nll / n), rel=1e-5)


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


# --------------------------------------------------------------------------
# 2. multiple choice: a fake model with known likelihoods, brute force, items
# --------------------------------------------------------------------------


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


def test_multiple_choice_rejects_bad_items(llama, tok):
    with pytest.raises(E.EvaluationError, match="at least 2"):
        E.multiple_choice(llama, tok, ["x"], [[" a"]], [0], progress=False)
    with pytest.raises(E.EvaluationError, match="label 3"):
        E.multiple_choice(llama, tok, ["x"], [[" a", " b"]], [3], progress=False)
    with pytest.raises(E.EvaluationError, match="normalization"):
        E.multiple_choice(llama, tok, ["x"], [[" a", " b"]], [0], normalization="max", progress=False)


def test_sentence_boundaries():
    text = "First one. Second? \"Third!\" Fourth"
    cuts = E.sentence_boundaries(text, "en")
    assert [text[:c] for c in cuts] == ["First one.", "First one. Second?", "First one. Second? \"Third!\"", text]
    zh = "我爱北京。北京是一！好"
    assert [zh[:c] for c in E.sentence_boundaries(zh, "zh")] == ["我爱北京。", "我爱北京。北京是一！", zh]
    assert E.sentence_boundaries("abc def ghi", "th") == [3, 7, 11]
    assert E.sentence_boundaries("Pi is 3.14 exactly. Yes", "en") == [19, 23]


def corpus(languages=("en", "fr", "zh"), n_docs=8, short=()) -> pd.DataFrame:
    """Aligned toy documents: key k has 5 sentences in every language (2 where listed in ``short``)."""
    rows = []
    for lang in languages:
        end = "。" if lang == "zh" else ". "
        for k in range(n_docs):
            n_sent = 2 if (lang, k) in short else 5
            text = "".join(f"{lang} doc {k} sentence {s}{end}" for s in range(n_sent)).strip()
            rows.append((f"{lang}:{k}", lang, text, "eval", len(text), f"key{k:02d}"))
        rows.append((f"{lang}:train", lang, "Not for evaluation. At all. Never. No. No.", "train", 40, "train0"))
    return pd.DataFrame(rows, columns=["doc_id", "language", "text", "split", "n_chars", "align_key"])


def test_continuation_items_are_deterministic_and_parallel_across_languages():
    docs = corpus()
    items = E.build_continuation_items(docs, n_items=5, seed=3)
    again = E.build_continuation_items(docs.sample(frac=1.0, random_state=1), n_items=5, seed=3)
    pd.testing.assert_frame_equal(items, again)  # row order of the corpus does not matter
    other = E.build_continuation_items(docs, n_items=5, seed=4)
    assert items["choice_keys"].tolist() != other["choice_keys"].tolist()

    assert list(items.columns) == E.ITEM_COLUMNS and len(items) == 15
    per_language = {lang: frame.reset_index(drop=True) for lang, frame in items.groupby("language")}
    for lang in ("fr", "zh"):
        for column in ("key", "label", "choice_keys"):
            assert per_language[lang][column].tolist() == per_language["en"][column].tolist()
    for _, item in items.iterrows():
        assert len(item["choices"]) == 4 and len(set(item["choice_keys"])) == 4
        assert item["choice_keys"][item["label"]] == item["key"] and "train0" not in item["choice_keys"]
        k = int(item["key"][3:])
        assert item["context"].endswith(f"doc {k} sentence 2" + ("。" if item["language"] == "zh" else "."))
        for key, choice in zip(item["choice_keys"], item["choices"]):  # distractors: same language, other docs
            j = int(key[3:])
            assert f"{item['language']} doc {j} sentence 3" in choice and f"doc {j} sentence 4" in choice
            assert choice.startswith(" ") == (item["language"] != "zh")
    assert np.bincount(items["label"], minlength=4).max() < 15  # the answer is not always at one position


def test_swapped_distractors_reorder_the_true_continuation():
    docs = corpus()
    items = E.build_continuation_items(docs, n_items=5, seed=3, distractors="swapped")
    plain = E.build_continuation_items(docs, n_items=5, seed=3)
    assert items["key"].tolist() == plain["key"].tolist() and items["label"].tolist() == plain["label"].tolist()
    for (_, item), true_choices in zip(items.iterrows(), plain["choices"]):
        true = item["choices"][item["label"]]
        assert item["choice_keys"][item["label"]] == item["key"]
        assert true == true_choices[item["label"]], "the true continuation is the same as with documents"
        wrong = [c for i, c in enumerate(item["choices"]) if i != item["label"]]
        assert len(set(wrong)) == 3 and true not in wrong
        for choice in wrong:
            assert sorted(choice.split()) == sorted(true.split()), "same words, another order"
            moved = sum(a != b for a, b in zip(choice.split(), true.split()))
            assert 2 <= moved <= 4, "two swaps of neighbours move at most four words"
    again = E.build_continuation_items(docs.sample(frac=1.0, random_state=2), n_items=5, seed=3, distractors="swapped")
    pd.testing.assert_frame_equal(items, again)
    # languages written without spaces swap characters
    versions = E._swapped_versions("我爱北京天安门", 3, 1, np.random.default_rng(0))
    assert len(set(versions)) == 3 and all(sorted(v) == sorted("我爱北京天安门") for v in versions)
    assert E._swapped_versions("太短", 3, 1, np.random.default_rng(0)) is None
    with pytest.raises(E.EvaluationError, match="distractors='mixed'"):
        E.build_continuation_items(docs, n_items=5, seed=3, distractors="mixed")


def test_continuation_items_drop_keys_that_do_not_split_in_every_language():
    docs = corpus(short={("fr", 2)})
    with pytest.warns(UserWarning, match="only 7 eligible"):
        items = E.build_continuation_items(docs, n_items=50, seed=0)
    assert "key02" not in {k for keys in items["choice_keys"] for k in keys}
    assert len(items) == 3 * 7


def test_continuation_items_unaligned_and_errors():
    docs = corpus(languages=("en",)).assign(align_key=None)
    items = E.build_continuation_items(docs, n_items=4, seed=0)
    assert items["key"].str.startswith("en:").all()
    with pytest.raises(E.EvaluationError, match="at least 4"):
        E.build_continuation_items(corpus(n_docs=3), n_items=2, seed=0)
    with pytest.raises(E.EvaluationError, match="split 'test'"):
        E.build_continuation_items(corpus(), n_items=2, seed=0, split="test")
    with pytest.raises(E.EvaluationError, match="no documents of language"):
        E.build_continuation_items(corpus(), n_items=2, seed=0, languages=["de"])


def test_continuation_accuracy_matches_brute_force(tok):
    model = tiny_model("gpt2")
    items = E.build_continuation_items(corpus(languages=("en",)), n_items=6, seed=0)
    result = E.evaluate(model, tok, "continuation", items, "en", batch_size=5, padding_side="left", progress=False)
    correct = 0
    for _, item in items.iterrows():
        scores = [brute_choice_logprob(model, tok, item["context"], c) for c in item["choices"]]
        correct += int(np.argmax(scores)) == item["label"]
    assert result["value"] == pytest.approx(correct / 6) and result["n"] == 6
    # a corpus table works too: the items are then built inside, with the same seed
    direct = E.evaluate(model, tok, "continuation", corpus(languages=("en",)), "en", n_items=6, seed=0,
                        progress=False)
    assert direct["value"] == result["value"]


# --------------------------------------------------------------------------
# 3. generation and fidelity
# --------------------------------------------------------------------------


def brute_greedy(model, tok, prompt: str, max_new_tokens: int) -> str:
    ids = tok(prompt)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    return tok.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom"])
def test_greedy_generation_matches_unbatched_argmax_loop(name, tok):
    model = tiny_model(name)
    expected = [brute_greedy(model, tok, prompt, 6) for prompt in TEXTS]
    for batch_size in (1, 3):
        assert E.greedy_generate(model, tok, TEXTS, max_new_tokens=6, batch_size=batch_size,
                                 progress=False) == expected
    # a checkpoint's own sampling settings must not leak into greedy decoding
    model.generation_config.update(do_sample=True, temperature=0.7, top_p=0.9, repetition_penalty=1.5)
    assert E.greedy_generate(model, tok, TEXTS, max_new_tokens=6, progress=False) == expected


def test_generation_stop_strings_and_errors(llama, tok):
    full = E.greedy_generate(llama, tok, TEXTS[:2], max_new_tokens=8, progress=False)
    stop = full[0][2]
    cut = E.greedy_generate(llama, tok, TEXTS[:2], max_new_tokens=8, stop=[stop], progress=False)
    assert cut[0] == full[0][: full[0].index(stop)]
    with pytest.raises(E.EvaluationError, match="empty"):
        E.greedy_generate(llama, tok, [], progress=False)
    with pytest.raises(E.EvaluationError, match="max_new_tokens"):
        E.greedy_generate(llama, tok, TEXTS, max_new_tokens=0, progress=False)


SENTENCES = {
    "en": "The weather is very nice today and we are going to the beach with our friends.",
    "de": "Das Wetter ist heute sehr schön und wir gehen mit unseren Freunden an den Strand.",
    "zh": "今天天气很好，我们和朋友一起去海边。",
    "sw": "Hali ya hewa ni nzuri sana leo na tunaenda ufukweni pamoja na marafiki zetu.",
    "ar": "الطقس جميل جدا اليوم ونحن ذاهبون إلى الشاطئ مع أصدقائنا.",
}


def test_language_identification_and_codes():
    languages = ["en", "de", "zh-Hans", "swh_Latn", "ara"]
    assert E.identify_languages(list(SENTENCES.values()), languages) == list(SENTENCES)
    assert E.identify_languages(["", "  ...  "], languages) == [E.UNDETERMINED] * 2
    spanish = "El tiempo es muy bueno hoy y vamos a la playa con nuestros amigos."
    assert E.identify_languages([spanish]) == ["es"]
    assert E.identify_languages([spanish], ["en", "de"])[0] in {"en", "de"}  # restricted
    codes = ("zh_CN", "JPN", "jap", "zho_Hans", "sw")
    assert [E.normalize_language(c) for c in codes] == ["zh", "ja", "ja", "zh", "sw"]
    with pytest.raises(E.EvaluationError, match="unknown to py3langid"):
        E.identify_languages(["x"], ["en", "xx"])


def test_fidelity_counts_the_share_identified_as_the_language(llama, tok, monkeypatch):
    generations = [SENTENCES["en"], SENTENCES["de"], "", SENTENCES["en"]]
    monkeypatch.setattr(E, "greedy_generate", lambda *a, **k: list(generations))
    result = E.fidelity(llama, tok, ["p"] * 4, "en", languages=["en", "de", "zh"])
    assert result["value"] == 0.5 and result["n"] == 4 and result["n_empty"] == 1 and result["top_other"] == "de"
    assert [d["label"] for d in result["details"]] == ["en", "de", "und", "en"]
    with pytest.raises(E.EvaluationError, match="not in languages"):
        E.fidelity(llama, tok, ["p"], "sw", languages=["en", "de"])
    with pytest.raises(E.EvaluationError, match="unknown to py3langid"):
        E.fidelity(llama, tok, ["p"], "xx")


def test_fidelity_from_documents_on_a_real_model(llama, tok):
    docs = corpus(languages=("en", "zh"))
    result = E.evaluate(llama, tok, "fidelity", docs, "en", limit=3, prompt_tokens=10, max_new_tokens=8,
                        progress=False)
    labels = E.identify_languages([d["text"] for d in result["details"]], ["en", "zh"])
    assert result["n"] == 3 and result["value"] == pytest.approx(np.mean([lab == "en" for lab in labels]))


# --------------------------------------------------------------------------
# answer metrics on hand-computed examples
# --------------------------------------------------------------------------


def test_token_f1_and_exact_match():
    # normalised: pred [cat, sat], gold [cat, sat, on]: P = 1, R = 2/3
    assert E.token_f1("The cat sat!", "a cat sat on", "en") == pytest.approx(0.8)
    assert E.token_f1("dog", ["a cat", "the dog"], "en") == 1.0  # best reference
    assert E.token_f1("cat cat", "cat", "en") == pytest.approx(2 * 0.5 * 1 / 1.5)  # bag, not set
    assert E.token_f1("", "cat", "en") == 0.0 and E.token_f1("", "", "en") == 1.0
    # zh: characters; 北京大学 vs 北京: P = 1/2, R = 1
    assert E.token_f1("北京大学", "北京", "zh") == pytest.approx(2 / 3)
    assert E.token_f1("北京大学", "北京", "en") == 0.0  # one whitespace token each: why zh is character-level
    assert E.exact_match("The Denver Broncos.", ["Denver Broncos"], "en") == 1.0
    assert E.exact_match("Die Broncos", "Broncos", "de") == 1.0
    assert E.exact_match("Broncos", "Denver Broncos", "en") == 0.0


def test_rouge_l():
    score = E.rouge_l("the cat was found under the bed", "the cat was under the bed")
    assert (score.precision, score.recall) == (pytest.approx(6 / 7), 1.0)
    assert score.fmeasure == pytest.approx(12 / 13)
    assert E.rouge_l("我爱北京", "我在北京", "zh").fmeasure == pytest.approx(3 / 4)
    assert E.rouge_l("Кошка сидела на ковре.", "кошка на ковре", "ru").recall == 1.0  # not 0: Cyrillic counts
    assert E.rouge_l("", "cat").fmeasure == 0.0
    assert E.rouge_l("b a c", "a b c").fmeasure == pytest.approx(2 / 3)  # subsequence, order matters


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        ("The answer is 1,234.", "en", 1234),
        ("She makes $18 every day.", "en", 18),
        ("It is -5 degrees, then 3.5 hours", "en", 3.5),
        ("Temperature: −12", "en", -12),
        ("Er zahlt 1.234 Euro", "de", 1234),
        ("Es kostet 3,5 Euro", "de", 3.5),
        ("It costs 1.25 dollars", "en", 1.25),
        ("1,234,567 people", "en", 1234567),
        ("1.234,5 und", "de", 1234.5),
        ("答案是１８。", "zh", 18),
        ("الجواب ١٨", "ar", 18),
        ("ตอบ ๑๒", "th", 12),
        ("il y a 1\u202f000 pommes", "fr", 1000),
        ("5-3 equals 2 so 2.", "en", 2),
        ("no number here", "en", None),
    ],
)
def test_extract_number(text, language, expected):
    value = E.extract_number(text, language)
    assert value == (pytest.approx(expected) if expected is not None else None)


def test_extract_number_first():
    assert E.extract_number("between 5 and 7", pick="first") == 5
    assert E.extract_number("between 5 and 7") == 7


# --------------------------------------------------------------------------
# 4. benchmarks on local fixtures in each dataset's format
# --------------------------------------------------------------------------


def fixed_generations(monkeypatch, outputs: list[str]):
    """Replace the model's greedy generations; records the prompts it was asked for."""
    seen: list = []

    def fake(model, tokenizer, prompts, **kwargs):
        seen.extend(prompts)
        return [E._cut_at_stops(o, kwargs.get("stop", ())) for o in outputs[: len(prompts)]]

    monkeypatch.setattr(E, "greedy_generate", fake)
    return seen


def write_mgsm(path):
    rows = [("Janet's ducks lay 16 eggs. She sells them for \"$2\" each. How much?", "32"),
            ("A robe takes 2 bolts. How many?", "3"),
            ("Josh buys a house for $80,000. Profit?", "70,000"),
            ("How cold is it?", "-4")]
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for q, a in rows:
            handle.write(f"{q}\t{a}\n")


def test_mgsm_loads_tsv_and_scores_exact_match(tmp_path, tok, llama, monkeypatch):
    write_mgsm(tmp_path / "mgsm_en.tsv")
    records = E.load_benchmark("mgsm", "en", tmp_path)  # directory lookup, juletxara file name
    assert [r["answer"] for r in records] == [32, 3, 70000, -4]
    assert records[0]["question"].startswith("Janet's") and '"$2"' in records[0]["question"]
    real = E.evaluate(llama, tok, "mgsm", tmp_path / "mgsm_en.tsv", "en", max_new_tokens=4, progress=False)
    assert real["n"] == 4 and 0 <= real["value"] <= 1
    seen = fixed_generations(monkeypatch, [" 32 dollars.\n\nQuestion: 99", " It is 3.0", " 70,000", " 4"])
    result = E.evaluate(llama, tok, "mgsm", tmp_path / "mgsm_en.tsv", "en")
    assert result["value"] == 0.75 and result["n"] == 4  # the stop string hides "99"; 4 != -4
    assert seen[0].endswith("Question: Janet's ducks lay 16 eggs. She sells them for \"$2\" each. How much?\nAnswer:")
    seen.clear()
    shots = E.evaluate(llama, tok, "mgsm", tmp_path / "mgsm_en.tsv", "en", n_shots=1)
    assert shots["n"] == 3 and seen[0].startswith("Question: Janet's") and " 32\n\nQuestion: A robe" in seen[0]


def test_xquad_squad_json_and_flat_jsonl(tmp_path, tok, llama, monkeypatch):
    context = "The Broncos won Super Bowl 50 in Santa Clara."
    squad = {"data": [{"title": "SB", "paragraphs": [{"context": context, "qas": [
        {"id": "1", "question": "Who won?", "answers": [{"text": "The Broncos", "answer_start": 0}]},
        {"id": "2", "question": "Where?", "answers": [{"text": "Santa Clara", "answer_start": 33}]}]}]}]}
    (tmp_path / "xquad.en.json").write_text(json.dumps(squad), encoding="utf-8")
    flat = [{"id": "1", "context": "北京是首都。", "question": "首都?",
             "answers": {"text": ["北京"], "answer_start": [0]}}]
    (tmp_path / "xquad.zh.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in flat),
                                            encoding="utf-8")
    assert E.load_benchmark("xquad", "en", tmp_path)[1]["answers"] == ["Santa Clara"]
    real = E.evaluate(llama, tok, "xquad", tmp_path, "en", max_new_tokens=4, progress=False)
    assert real["n"] == 2
    seen = fixed_generations(monkeypatch, [" Broncos\nQuestion", " in Santa Clara, California"])
    result = E.evaluate(llama, tok, "xquad", tmp_path, "en")
    # F1: 1.0 (article removed) and P = 2/4, R = 1 -> 2/3
    assert result["value"] == pytest.approx((1 + 2 / 3) / 2) and result["exact_match"] == 0.5
    assert tok.decode(seen[0], skip_special_tokens=True) == f"{context}\n\nQuestion: Who won?\nAnswer:"
    fixed_generations(monkeypatch, ["北京大学"])
    assert E.evaluate(llama, tok, "xquad", tmp_path, "zh")["value"] == pytest.approx(2 / 3)


def test_xquad_prompt_is_shortened_in_the_passage_not_the_question(tmp_path, tok, llama, monkeypatch):
    record = {"context": "word " * 300, "question": "Which word?", "answers": {"text": ["word"], "answer_start": [0]}}
    seen = fixed_generations(monkeypatch, ["word"])
    E.evaluate(llama, tok, "xquad", [record], "en", max_new_tokens=16)
    assert len(seen[0]) <= 128 - 16 and seen[0][0] == tok.bos_token_id
    prompt = tok.decode(seen[0], skip_special_tokens=True)
    assert prompt.startswith("word word") and prompt.endswith("\n\nQuestion: Which word?\nAnswer:")


def test_xcopa_formats_and_matches_brute_force(tmp_path, tok):
    model = tiny_model("opt")
    records = [
        {"premise": "The item was wrapped.", "choice1": "It was fragile.", "choice2": "It was small.",
         "question": "cause", "label": 0, "idx": 0},
        {"premise": "I emptied my pockets.", "choice1": "I found a ticket.", "choice2": "I found a key.",
         "question": "effect", "label": 1, "idx": 1},
        {"premise": "我爱北京。", "choice1": "北京是一", "choice2": "我在北京", "question": "cause", "label": 0},
    ]
    (tmp_path / "test.en.jsonl").write_text("\n".join(json.dumps(r) for r in records[:2]), encoding="utf-8")
    assert E.xcopa_item(records[0], "en", E.XCOPA_CONNECTORS["en"]) == (
        "The item was wrapped because", [" it was fragile.", " it was small."])
    assert E.xcopa_item(records[2], "zh", E.XCOPA_CONNECTORS["zh"]) == ("我爱北京因为", ["北京是一", "我在北京"])
    result = E.evaluate(model, tok, "xcopa", tmp_path, "en", progress=False)
    correct = 0
    for record in records[:2]:
        context, choices = E.xcopa_item(record, "en", E.XCOPA_CONNECTORS["en"])
        scores = [brute_choice_logprob(model, tok, context, c) for c in choices]
        correct += int(np.argmax(scores)) == record["label"]
    assert result["value"] == correct / 2 and result["n"] == 2
    with pytest.raises(E.EvaluationError, match="connector"):
        E.evaluate(model, tok, "xcopa", records[:2], "de")
    assert E.evaluate(model, tok, "xcopa", records[:2], "de", connectors={"cause": "weil", "effect": "also"},
                      progress=False)["n"] == 2


def test_xcsqa_both_layouts(tmp_path, tok):
    model = tiny_model("gpt_neox")
    original = {"id": "q1", "lang": "en", "question": {"stem": "Where is a cat?", "choices": [
        {"label": "A", "text": "bed"}, {"label": "B", "text": "sky"}, {"label": "C", "text": "sea"}]},
        "answerKey": "A"}
    hub = {"id": "q1", "lang": "en", "question": {"stem": "Where is a cat?", "choices": {
        "label": ["A", "B", "C"], "text": ["bed", "sky", "sea"]}}, "answerKey": "A"}
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "dev.jsonl").write_text(json.dumps(original), encoding="utf-8")
    assert E.load_benchmark("xcsqa", "en", tmp_path) == E._benchmark_records("xcsqa", [hub], "en", None, None)
    result = E.evaluate(model, tok, "xcsqa", tmp_path, "en", progress=False)
    scores = [brute_choice_logprob(model, tok, "Question: Where is a cat?\nAnswer:", " " + c) for c in
              ("bed", "sky", "sea")]
    assert result["value"] == float(np.argmax(scores) == 0)
    with pytest.raises(E.EvaluationError, match="answerKey"):
        E.evaluate(model, tok, "xcsqa", [dict(hub, answerKey="")], "en")


def test_xlsum_rouge_l(tmp_path, tok, llama, monkeypatch):
    rows = [{"id": "1", "text": "A long article about cats. " * 40, "summary": "the cat was under the bed"},
            {"id": "2", "text": "我爱北京。", "summary": "我在北京"}]
    (tmp_path / "english_test.jsonl").write_text(json.dumps(rows[0]), encoding="utf-8")
    (tmp_path / "chinese_simplified_test.jsonl").write_text(json.dumps(rows[1], ensure_ascii=False),
                                                           encoding="utf-8")
    real = E.evaluate(llama, tok, "xlsum", tmp_path, "en", max_new_tokens=6, progress=False)
    assert real["n"] == 1
    seen = fixed_generations(monkeypatch, ["the cat was found under the bed\nmore"])
    assert E.evaluate(llama, tok, "xlsum", tmp_path, "en")["value"] == pytest.approx(12 / 13)
    prompt = tok.decode(seen[0], skip_special_tokens=True)
    assert prompt.startswith("Article: A long article") and prompt.endswith("\nSummary:")  # article cut, not the cue
    fixed_generations(monkeypatch, ["我爱北京"])
    assert E.evaluate(llama, tok, "xlsum", tmp_path, "zh")["value"] == pytest.approx(3 / 4)


def test_benchmark_errors(tmp_path, tok, llama, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(E.MissingDataError, match=r"'mgsm'.*juletxara/mgsm.*Fix: pass data="):
        E.evaluate(llama, tok, "mgsm", None, "fr")
    with pytest.raises(E.EvaluationError, match="has no language 'xx'"):
        E.load_benchmark("xcopa", "xx")
    with pytest.raises(E.EvaluationError, match="looked for"):
        E.load_benchmark("mgsm", "de", tmp_path)
    (tmp_path / "en.jsonl").write_text(json.dumps({"id": "0-0", "text": "A paragraph."}), encoding="utf-8")
    with pytest.raises(E.EvaluationError, match="document corpus"):
        E.load_benchmark("xquad", "en", tmp_path / "en.jsonl")
    (tmp_path / "empty.tsv").write_text("", encoding="utf-8")
    with pytest.raises(E.EvaluationError, match="empty"):
        E.load_benchmark("mgsm", "en", tmp_path / "empty.tsv")
    with pytest.raises(E.EvaluationError, match="cause or effect"):
        E.evaluate(llama, tok, "xcopa", [{"premise": "p", "choice1": "a", "choice2": "b", "question": "why",
                                          "label": 0}], "en")


def test_load_documents_reads_shared_layouts(tmp_path):
    lines = [{"article": 0, "title": "T", "para": 0, "id": "0-0", "text": "\ufeffFirst\u200b paragraph."},
             {"article": 0, "title": "T", "para": 1, "id": "0-1", "text": "Second."}]
    (tmp_path / "de.jsonl").write_text("\n".join(json.dumps(r) for r in lines), encoding="utf-8")
    docs = E.load_documents(tmp_path / "de.jsonl")
    assert docs["text"].tolist() == ["First paragraph.", "Second."]
    assert docs["align_key"].tolist() == ["0-0", "0-1"] and set(docs["language"]) == {"de"}
    assert set(docs["split"]) == {"eval"} and docs["n_chars"].tolist() == [16, 7]
    with open(tmp_path / "zh.tsv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["flores_index", "sib_split", "category", "text"])
        writer.writerow(["0", "train", "health", "我爱北京。"])
        writer.writerow(["7", "test", "science", '他说"好"。'])
    with open(tmp_path / "zh.tsv", "a", encoding="utf-8") as handle:
        handle.write('8\ttest\tscience\t他说"好"了。\n')  # an unquoted field keeps its quotes
    sentences = E.load_documents(tmp_path / "zh.tsv")
    assert sentences["align_key"].tolist() == ["0", "7", "8"]
    assert sentences["text"].tolist()[1:] == ['他说"好"。', '他说"好"了。']


# --------------------------------------------------------------------------
# 5. the dispatcher
# --------------------------------------------------------------------------


def test_dispatcher_rows_and_errors(llama, tok):
    docs = corpus(languages=("en", "fr"))
    row = E.evaluate(llama, tok, "perplexity", docs, "en", progress=False)
    texts = docs[(docs.language == "en") & (docs.split == "eval")]["text"].tolist()
    assert row["value"] == pytest.approx(E.perplexity(llama, tok, texts, progress=False).perplexity)
    assert (row["metric"], row["language"], row["n"]) == ("perplexity", "en", len(texts))
    table = E.results_table([row, E.evaluate(llama, tok, "perplexity", docs, "fr", limit=2, progress=False)])
    assert list(table.columns[:4]) == ["metric", "language", "value", "n"] and "details" not in table
    assert table["n"].tolist() == [8, 2]

    with pytest.raises(E.EvaluationError, match="metric 'bleu' is unknown"):
        E.evaluate(llama, tok, "bleu", docs, "en")
    with pytest.raises(E.EvaluationError, match=r"no option\(s\) \['n_item'\]"):
        E.evaluate(llama, tok, "continuation", docs, "en", n_item=3)
    for metric in ("perplexity", "continuation", "fidelity"):
        with pytest.raises(E.MissingDataError, match=rf"metric '{metric}'.*data is None. Fix: pass data="):
            E.evaluate(llama, tok, metric, None, "en")
    with pytest.raises(E.EvaluationError, match="no documents of language 'de'"):
        E.evaluate(llama, tok, "perplexity", docs, "de")
    assert set(E.METRICS) >= {"perplexity", "continuation", "fidelity", "mgsm", "xquad", "xcopa", "xcsqa", "xlsum"}
