"""Continuation items (langneurons.evaluation.items): sentences, distractors, parallel items, accuracy."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from evaluation_helpers import brute_choice_logprob, char_tokenizer, corpus
from models import tiny_model

from langneurons import evaluation as E
from langneurons.corpora import DEMO_TRANSLATIONS, sample_corpus
from langneurons.demo_model import build_tokenizer
from langneurons.evaluation.items import _swapped_versions


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def test_sentence_boundaries():
    text = "First one. Second? \"Third!\" Fourth"
    cuts = E.sentence_boundaries(text, "en")
    assert [text[:c] for c in cuts] == ["First one.", "First one. Second?", "First one. Second? \"Third!\"", text]
    zh = "我爱北京。北京是一！好"
    assert [zh[:c] for c in E.sentence_boundaries(zh, "zh")] == ["我爱北京。", "我爱北京。北京是一！", zh]
    assert E.sentence_boundaries("abc def ghi", "th") == [3, 7, 11]
    assert E.sentence_boundaries("Pi is 3.14 exactly. Yes", "en") == [19, 23]


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


def test_swapped_distractors_reorder_the_true_continuation(tok):
    docs = corpus()
    items = E.build_continuation_items(docs, n_items=5, seed=3, distractors="swapped", tokenizer=tok)
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
    again = E.build_continuation_items(docs.sample(frac=1.0, random_state=2), n_items=5, seed=3, distractors="swapped",
                                       tokenizer=tok)  # fmt: skip
    pd.testing.assert_frame_equal(items, again)
    # languages written without spaces swap characters
    versions = _swapped_versions("我爱北京天安门", 3, 1, np.random.default_rng(0))
    assert len(set(versions)) == 3 and all(sorted(v) == sorted("我爱北京天安门") for v in versions)
    assert _swapped_versions("太短", 3, 1, np.random.default_rng(0)) is None
    with pytest.raises(E.EvaluationError, match="distractors='mixed'"):
        E.build_continuation_items(docs, n_items=5, seed=3, distractors="mixed")
    with pytest.raises(E.EvaluationError, match=r"needs the evaluated model's tokenizer \(tokenizer=\.\.\.\)"):
        E.build_continuation_items(docs, n_items=5, seed=3, distractors="swapped")


#: The demo's languages that continuation items can be built in: the Korean translation has no sentence punctuation.
ITEM_LANGUAGES = sorted(set(DEMO_TRANSLATIONS) - {"ko"})


@pytest.fixture(scope="module")
def demo_items():
    """Swapped-distractor items of the demo corpus in its languages, and a byte-level BPE trained on it."""
    frames = sample_corpus({"source": "demo"}, ITEM_LANGUAGES, {"eval": 40, "train": 40}, seed=0,
                           filters={"min_chars": 200, "max_chars": 3000})  # fmt: skip
    docs = pd.concat(frames.values(), ignore_index=True)
    tokenizer = build_tokenizer(docs.loc[docs["split"] == "train", "text"], vocab_size=4000)
    return tokenizer, E.build_continuation_items(docs, n_items=30, seed=0, distractors="swapped", tokenizer=tokenizer)


def test_swapped_distractors_put_a_know_nothing_model_at_chance_in_every_demo_language(demo_items):
    tokenizer, items = demo_items
    assert sorted(set(items["language"])) == ITEM_LANGUAGES
    for language, mine in items.groupby("language"):
        assert len(mine) >= 20, language
        chance = E.chance_level(tokenizer, mine["context"].tolist(), mine["choices"].tolist(), mine["label"].tolist())
        assert chance.mean() == 0.25, language  # exactly 1/k: no sampling error left
        for choices in mine["choices"]:  # the token counts, straight from the tokenizer
            assert len({len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in choices}) == 1, choices


def spaced_corpus() -> pd.DataFrame:
    """Aligned documents whose continuations hold line breaks, double spaces and (zh) inner spaces."""
    rows = []
    for k in range(6):
        texts = {
            "en": f"Doc {k} starts. It goes on. Then a third.\nThe  cat of doc {k}\nsat on the mat. It  was\nhappy.",
            "zh": f"我爱北京。北京是{k}。我在北京。\n北京是一  个\n城市。我爱北京。",
        }
        rows += [(f"{lang}:{k}", lang, text, "eval", f"key{k}") for lang, text in texts.items()]
    return pd.DataFrame(rows, columns=["doc_id", "language", "text", "split", "align_key"])


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_choice_keeps_the_true_continuations_whitespace(language, tok):
    items = E.build_continuation_items(spaced_corpus(), n_items=6, seed=0, distractors="swapped",
                                       languages=[language], tokenizer=tok)  # fmt: skip
    assert len(items) == 6
    for _, item in items.iterrows():
        true = item["choices"][item["label"]]
        assert "\n" in true and "  " in true
        for choice in item["choices"]:
            assert sorted(choice) == sorted(true)  # the same characters, in another order
            if language == "zh":  # characters move; every whitespace character stays where it was
                assert [(i, ch) for i, ch in enumerate(choice) if ch.isspace()] == [
                    (i, ch) for i, ch in enumerate(true) if ch.isspace()
                ]
            else:  # words move between the same whitespace runs
                assert re.findall(r"\s+", choice) == re.findall(r"\s+", true)


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
    # the demo's max_length: every context (about 62 tokens) and choice (about 42) fits whole
    result = E.evaluate(model, tok, "continuation", items, "en", max_length=128, batch_size=5, padding_side="left",
                        progress=False)  # fmt: skip
    correct = []
    for (_, item), detail in zip(items.iterrows(), result["details"]):
        scores = [brute_choice_logprob(model, tok, item["context"], c) for c in item["choices"]]
        np.testing.assert_allclose(detail["logprob_sum"], scores, rtol=1e-5)
        correct.append(int(np.argmax(scores)) == item["label"])
    assert result["value"] == pytest.approx(np.mean(correct)) and result["n"] == 6
    assert result["per_item"]["value"].tolist() == correct
    assert result["per_item"]["key"].tolist() == items["key"].tolist()
    # every choice is "... doc k sentence 3. ... doc k sentence 4." with a one-digit k: equally long, chance 1/4
    assert result["chance"] == 0.25 and result["per_item"]["chance"].tolist() == [0.25] * 6
    # a corpus table works too: the items are then built inside, with the same seed
    direct = E.evaluate(model, tok, "continuation", corpus(languages=("en",)), "en", n_items=6, seed=0,
                        progress=False)
    assert direct["value"] == result["value"]
