"""Greedy generation, language identification and fidelity (langneurons.evaluation.generation, .langid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from evaluation_helpers import TEXTS, char_tokenizer, corpus
from models import tiny_model

from langneurons import evaluation as E
from langneurons.evaluation import generation


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


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


#: Generations with the language a reader gives them; text without letters has no language.
HAND_LABELLED = [
    (SENTENCES["en"], "en"),
    (SENTENCES["de"], "de"),
    ("", E.UNDETERMINED),
    ("12345 !!!", E.UNDETERMINED),
    (SENTENCES["zh"], "zh"),
    ("3.14 + 2 = 5.14", E.UNDETERMINED),
    ("It is 12 o'clock and the children are going home from school now.", "en"),
    ("  ...  \n", E.UNDETERMINED),
]


def test_text_without_letters_has_no_language():
    texts = [text for text, _ in HAND_LABELLED]
    assert E.identify_languages(texts, ["en", "de", "zh"]) == [label for _, label in HAND_LABELLED]
    assert E.identify_languages(["12345 !!!", "٣٤٥", "²³ — 42%"]) == [E.UNDETERMINED] * 3  # unrestricted too


def test_fidelity_counts_the_share_identified_as_the_language(llama, tok, monkeypatch):
    generations = [text for text, _ in HAND_LABELLED]
    monkeypatch.setattr(generation, "greedy_generate", lambda *a, **k: list(generations))
    result = E.fidelity(llama, tok, ["p"] * len(generations), "en", languages=["en", "de", "zh"])
    # by hand: 2 of the 8 generations are English; digits and punctuation are not
    assert result["value"] == 2 / 8 and result["n"] == 8 and result["n_empty"] == 1
    assert [d["label"] for d in result["details"]] == [label for _, label in HAND_LABELLED]
    assert result["per_item"]["value"].tolist() == [label == "en" for _, label in HAND_LABELLED]
    with pytest.raises(E.EvaluationError, match="not in languages"):
        E.fidelity(llama, tok, ["p"], "sw", languages=["en", "de"])
    with pytest.raises(E.EvaluationError, match="unknown to py3langid"):
        E.fidelity(llama, tok, ["p"], "xx")


def test_fidelity_from_documents_on_a_real_model(llama, tok):
    docs = corpus(languages=("en", "zh"))
    result = E.evaluate(llama, tok, "fidelity", docs, "en", limit=3, prompt_tokens=10, max_new_tokens=8,
                        progress=False)
    # the prompts are the documents' first 10 tokens; the texts are the model's greedy continuations of them
    english = docs[(docs["language"] == "en") & (docs["split"] == "eval")]["text"].tolist()[:3]
    assert [d["prompt"] for d in result["details"]] == [text[:10] for text in english]
    assert [d["text"] for d in result["details"]] == [brute_greedy(llama, tok, text[:10], 8) for text in english]
    assert result["n"] == 3
    assert result["value"] == pytest.approx(np.mean([d["label"] == "en" for d in result["details"]]))
