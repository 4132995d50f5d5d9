"""Answer metrics (langneurons.evaluation.metrics) on hand-computed examples."""

from __future__ import annotations

import pytest

from langneurons import evaluation as E


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
