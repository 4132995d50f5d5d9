"""Answer scoring: exact match, token F1, ROUGE-L and numbers, multilingual."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from langneurons.evaluation.common import EvaluationError, normalize_language

#: Scripts without spaces between words: scored on characters.
CHARACTER_LEVEL_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "yue", "wuu"})
#: Articles removed before comparing answers (SQuAD for en, MLQA for es/de/vi).
_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
}


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


def normalize_answer(text: str, language: str = "en") -> str:
    """SQuAD normalisation, made multilingual: NFKC, lower case, no punctuation/symbols, no articles, one space."""
    language = normalize_language(language)
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if _is_punctuation(ch) else ch for ch in text)
    if language in _ARTICLES:
        text = re.sub(_ARTICLES[language], " ", text)
    return " ".join(text.split())


def _answer_tokens(text: str, language: str) -> list[str]:
    normalized = normalize_answer(text, language)
    if normalize_language(language) in CHARACTER_LEVEL_LANGUAGES:
        return [ch for ch in normalized if not ch.isspace()]
    return normalized.split()


def exact_match(prediction: str, references: str | Sequence[str], language: str = "en") -> float:
    """1.0 if the normalised prediction equals any normalised reference."""
    refs = [references] if isinstance(references, str) else list(references)
    pred = normalize_answer(prediction, language)
    return float(any(pred == normalize_answer(ref, language) for ref in refs))


def token_f1(prediction: str, references: str | Sequence[str], language: str = "en") -> float:
    """SQuAD token F1 (bag-of-tokens overlap), the maximum over references.

    Tokens are whitespace words after :func:`normalize_answer`, except for
    Chinese, Japanese, Thai (and other scripts in
    :data:`CHARACTER_LEVEL_LANGUAGES`), which write words without spaces:
    there a whitespace "token" is a whole clause and F1 would degenerate to
    exact match, so characters are the tokens (as MLQA's evaluation does for
    Chinese), which needs no word segmenter and its errors.
    """
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise EvaluationError("token_f1 needs at least one reference answer")
    pred = _answer_tokens(prediction, language)
    best = 0.0
    for ref in refs:
        gold = _answer_tokens(ref, language)
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common == 0:
            continue
        precision, recall = common / len(pred), common / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


@dataclass(frozen=True)
class RougeScore:
    precision: float
    recall: float
    fmeasure: float


def rouge_tokens(text: str, language: str = "en") -> list[str]:
    """ROUGE tokens: lower-cased words split at whitespace and punctuation; characters for CJK/Thai.

    Why not ``rouge-score``'s tokenizer: it keeps only ``[a-z0-9]``, so any
    Cyrillic, Arabic, Devanagari or CJK summary tokenises to nothing and
    scores 0. Splitting at whitespace (not ``\\w``) keeps the combining marks
    of Indic scripts inside their words. Chinese, Japanese and Thai write
    words without spaces, so characters are their tokens (a character LCS
    needs no segmenter); this makes their scores comparable with each
    other, not with the word-level scores of other languages.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    if normalize_language(language) in CHARACTER_LEVEL_LANGUAGES:
        return [ch for ch in text if not ch.isspace() and not _is_punctuation(ch)]
    return "".join(" " if _is_punctuation(ch) else ch for ch in text).split()


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (one-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(row[j], row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(prediction: str, reference: str, language: str = "en") -> RougeScore:
    """ROUGE-L (summary-level LCS, no stemming): precision, recall and F1 (beta = 1, as rouge-score)."""
    pred, ref = rouge_tokens(prediction, language), rouge_tokens(reference, language)
    lcs = _lcs_length(pred, ref) if pred and ref else 0
    if lcs == 0:
        return RougeScore(0.0, 0.0, 0.0)
    precision, recall = lcs / len(pred), lcs / len(ref)
    return RougeScore(precision, recall, 2 * precision * recall / (precision + recall))


#: Languages that write 1.000 for a thousand (and 1,5 for one and a half).
_DOT_THOUSANDS = frozenset({"de", "es", "it", "pt", "id", "tr", "vi", "nl", "da", "ro", "el", "sw"})
_NUMBER = re.compile(r"(?<!\d)[-\u2212]?\d+(?:[.,]\d+)*")
_THIN_SPACE_GROUP = re.compile(r"(?<=\d)[\u00a0\u202f\u2009'](?=\d{3}(?!\d))")
_FULLWIDTH = str.maketrans({"\uff0c": ",", "\uff0e": ".", "\uff0d": "-", "\u2212": "-", "\u066b": ".", "\u066c": ","})


def _ascii_digits(text: str) -> str:
    """Any Unicode decimal digit (full-width, Arabic-Indic, Thai, Devanagari ...) to ASCII."""
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in text)


def _parse_number(raw: str, language: str) -> float | None:
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("-")
    separators = re.findall(r"[.,]", body)
    groups = re.split(r"[.,]", body)
    if not separators:
        return sign * float(body)
    if len(set(separators)) == 2:  # 1,234.5 or 1.234,5: the last separator is the decimal one
        decimal = separators[-1]
        integer, fraction = body.rsplit(decimal, 1)
        return sign * float(re.sub(r"[.,]", "", integer) + "." + fraction)
    sep = separators[0]
    thousands_sep = "." if normalize_language(language) in _DOT_THOUSANDS else ","
    all_groups_of_three = all(len(g) == 3 for g in groups[1:])
    if len(separators) > 1:  # 1,234,567: only thousands separators can repeat
        return sign * float("".join(groups)) if all_groups_of_three else None
    if sep == thousands_sep and all_groups_of_three:
        return sign * float("".join(groups))
    return sign * float(groups[0] + "." + groups[1])


def extract_number(text: str, language: str = "en", pick: str = "last") -> float | None:
    """The last (or first) number in ``text``, or None.

    Robust to thousands separators (1,234 / 1.234 in languages that write it
    so / 1 234 with a no-break space), decimals (3.5, 3,5), signs (-, U+2212),
    currency and units around the number, a sentence-final full stop, and
    non-ASCII digits (full-width, Arabic-Indic, Thai, Devanagari).
    """
    if pick not in ("first", "last"):
        raise EvaluationError(f"pick={pick!r} must be 'first' or 'last'")
    text = _THIN_SPACE_GROUP.sub("", _ascii_digits(text).translate(_FULLWIDTH))
    numbers = [value for m in _NUMBER.finditer(text) if (value := _parse_number(m.group(), language)) is not None]
    if not numbers:
        return None
    return numbers[-1] if pick == "last" else numbers[0]


def numbers_match(prediction: float | None, reference: float, tolerance: float = 1e-6) -> bool:
    """Exact numeric match up to float round-off."""
    return prediction is not None and math.isclose(prediction, reference, rel_tol=tolerance, abs_tol=tolerance)
