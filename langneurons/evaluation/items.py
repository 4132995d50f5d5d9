"""Continuation items: held-out passages split into a context and its true continuation among distractors."""

from __future__ import annotations

import re
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from langneurons.batching import encode
from langneurons.evaluation.common import EvaluationError, _select_docs, normalize_language
from langneurons.evaluation.scoring import multiple_choice

# Sentence ends: terminal punctuation followed by whitespace (optionally after
# closing quotes/brackets), or CJK full-width terminators (no space follows them).
_SENTENCE_END = re.compile(
    r"[.!?\u061f\u06d4\u0964\u0965\u1362\u104b]+[\"'\u201d\u2019\u00bb)\]]*(?=\s)"
    r"|[\u3002\uff01\uff1f]+[\u300d\u300f\u201d\u2019\uff09)]*"
)
#: Languages whose sentences are separated by spaces, not punctuation.
_SPACE_SEPARATED_SENTENCES = frozenset({"th", "lo"})


def sentence_boundaries(text: str, language: str) -> list[int]:
    """Character offsets where sentences end (exclusive), in order; the text end is the last.

    A light rule-based splitter (no model, same rule for every language):
    Latin/Cyrillic/Arabic/Devanagari terminators followed by whitespace, CJK
    full-width terminators anywhere; Thai, which has no sentence
    punctuation, at whitespace runs. Whitespace after a boundary belongs to
    the next sentence, so a continuation keeps its leading separator.
    """
    end = len(text.rstrip())
    if normalize_language(language) in _SPACE_SEPARATED_SENTENCES:
        cuts = [m.start() for m in re.finditer(r"\s+", text)]
    else:
        cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    cuts = [c for c in cuts if 0 < c < end]
    return sorted(set(cuts)) + [end] if end > 0 else []


ITEM_COLUMNS = ["item_id", "language", "key", "context", "choices", "label", "choice_keys"]


def _split_document(text: str, language: str, context_sentences: int, continuation_sentences: int):
    """(context, continuation) of one document, or None when it has too few sentences."""
    cuts = sentence_boundaries(text, language)
    if len(cuts) < context_sentences + continuation_sentences:
        return None
    cut = cuts[context_sentences - 1]
    return text[:cut], text[cut : cuts[context_sentences + continuation_sentences - 1]]


DISTRACTORS = ("documents", "swapped")


def _movable_units(text: str) -> tuple[list[str], list[int]]:
    """The pieces of ``text`` and which of them may move: words where the text has spaces, else characters.

    Words are the pieces between whitespace runs; texts with fewer than 4
    words (zh, ja, th) move their non-space characters. Whitespace never
    moves, so every version of a text keeps its line breaks and spacing.
    """
    pieces = re.split(r"(\s+)", text)
    words = [i for i, piece in enumerate(pieces) if piece and not piece.isspace()]
    if len(words) >= 4:
        return pieces, words
    pieces = list(text)
    return pieces, [i for i, ch in enumerate(pieces) if not ch.isspace()]


def _swapped_versions(
    text: str, count: int, swaps: int, rng: np.random.Generator, n_tokens: Callable[[str], int] | None = None
) -> list[str] | None:
    """``count`` distinct versions of ``text`` with ``swaps`` random pairs of neighbouring units exchanged.

    With ``n_tokens`` (a text's token count), only versions with as many
    tokens as ``text`` are kept. None when the text has fewer than 4 units
    or no such versions can be found.
    """
    pieces, movable = _movable_units(text)
    if len(movable) < 4:
        return None
    length = None if n_tokens is None else n_tokens(text)
    found: list[str] = []
    for _ in range(50 * count):
        changed = list(pieces)
        for _ in range(swaps):
            i = int(rng.integers(len(movable) - 1))
            a, b = movable[i], movable[i + 1]
            changed[a], changed[b] = changed[b], changed[a]
        candidate = "".join(changed)
        if candidate != text and candidate not in found and (length is None or n_tokens(candidate) == length):
            found.append(candidate)
            if len(found) == count:
                return found
    return None


def build_continuation_items(
    docs: pd.DataFrame,
    n_items: int,
    seed: int,
    n_choices: int = 4,
    *,
    context_sentences: int = 3,
    continuation_sentences: int = 2,
    split: str | None = "eval",
    languages: Sequence[str] | None = None,
    aligned: bool | None = None,
    distractors: str = "documents",
    swaps: int = 2,
    tokenizer: Any = None,
) -> pd.DataFrame:
    """Multiple-choice continuation items, parallel across languages.

    Each eligible document is split into its first ``context_sentences``
    sentences (the context) and the next ``continuation_sentences`` (the
    true continuation). With ``distractors="documents"`` the wrong choices
    are the continuations of other documents of the same language at the
    same sentence positions, so all choices are fluent text of the right
    language and similar length: this asks for topical coherence, which a
    small model may lack. With ``"swapped"`` they are the true continuation
    with ``swaps`` seeded random pairs of neighbouring words (characters in
    languages written without spaces) exchanged, its whitespace left in
    place: nearly the same tokens, so only local word order tells them
    apart, which a model that has learnt the language can do and one that
    has not cannot. Their ``choice_keys`` are ``<key>#swapped<j>``.

    Swapped distractors need the evaluated model's ``tokenizer``: a swap
    that changes the number of tokens is redrawn (a swap of characters can
    break a merge into several tokens), so every choice has exactly the true
    continuation's token count. Otherwise a model that knows nothing would
    pick the truth by length alone under summed log-likelihoods (it did in
    zh: 0.50 instead of 0.25 with the demo tokenizer). With equal counts,
    summed and per-token mean scores rank the choices alike, and a uniform
    model is at exactly 1/k (:func:`langneurons.evaluation.chance_level`
    measures it for any item set). A document without such versions is not
    eligible.

    Aligned corpora (every row has an ``align_key``, the default when so):
    a key is eligible only if its document splits in *every* language, and
    one seeded draw (NumPy ``default_rng(seed)``) over the sorted eligible
    keys picks the item keys, the distractor keys and the position of the
    true answer. The items are thus the same in every language: same keys,
    same distractor keys, same label. Unaligned corpora use ``doc_id`` (or
    the row order) as key, one language at a time, with the same seed.

    Returns a DataFrame with :data:`ITEM_COLUMNS` (``choices`` and
    ``choice_keys`` are lists). Asking for more items than there are
    eligible keys gives all of them, with a warning.
    """
    if not isinstance(n_items, int) or n_items < 1:
        raise EvaluationError(f"n_items={n_items!r} must be a positive integer")
    if not isinstance(n_choices, int) or n_choices < 2:
        raise EvaluationError(f"n_choices={n_choices!r} must be an integer >= 2")
    if context_sentences < 1 or continuation_sentences < 1:
        raise EvaluationError("context_sentences and continuation_sentences must be >= 1")
    if distractors not in DISTRACTORS:
        raise EvaluationError(f"distractors={distractors!r}; use one of {', '.join(DISTRACTORS)}")
    docs = _select_docs(docs, split, "docs")
    if languages is not None:
        wanted = [normalize_language(code) for code in languages]
        absent = sorted(set(wanted) - set(docs["language"]))
        if absent:
            raise EvaluationError(
                f"docs has no documents of language(s) {absent}; it has {sorted(set(docs['language']))}"
            )
        docs = docs[docs["language"].isin(wanted)]
    has_keys = "align_key" in docs.columns and docs["align_key"].notna().all()
    if aligned is None:
        aligned = has_keys
    if aligned and not has_keys:
        raise EvaluationError("aligned=True needs an align_key on every document; pass aligned=False")

    def keyed(frame: pd.DataFrame) -> dict[str, str]:
        if aligned:
            keys = frame["align_key"].astype(str)
        elif "doc_id" in frame.columns:
            keys = frame["doc_id"].astype(str)
        else:
            keys = pd.Series([str(i) for i in range(len(frame))], index=frame.index)
        duplicated = sorted(set(keys[keys.duplicated()]))
        if duplicated:
            raise EvaluationError(
                f"language {frame['language'].iloc[0]!r} has several documents with key(s) {duplicated[:5]}; "
                "keys must be unique per language"
            )
        return dict(zip(keys, frame["text"]))

    by_language = {lang: keyed(frame) for lang, frame in docs.groupby("language", sort=True)}
    splits = {
        lang: {
            key: parts
            for key, text in texts.items()
            if (parts := _split_document(text, lang, context_sentences, continuation_sentences)) is not None
        }
        for lang, texts in by_language.items()
    }
    shuffles: dict[str, dict[str, list[str]]] = {}  # language -> key -> wrong choices
    if distractors == "swapped":
        if not isinstance(swaps, int) or swaps < 1:
            raise EvaluationError(f"swaps={swaps!r} must be a positive integer")
        if tokenizer is None:
            raise EvaluationError(
                "distractors='swapped' needs the evaluated model's tokenizer (tokenizer=...): a distractor must have "
                "as many tokens as the true continuation, or its length gives the answer away"
            )

        def n_tokens(text: str) -> int:
            return len(encode(tokenizer, [text], specials="none")[0])  # as score_continuations encodes a choice

        for lang, parts in splits.items():
            shuffles[lang] = {}
            for key, (_, true) in parts.items():
                rng = np.random.default_rng([seed, zlib.crc32(f"{lang}\x1f{key}".encode())])
                versions = _swapped_versions(true, n_choices - 1, swaps, rng, n_tokens)
                if versions is not None:
                    shuffles[lang][key] = versions
            splits[lang] = {key: value for key, value in parts.items() if key in shuffles[lang]}
    groups = [list(splits)] if aligned else [[lang] for lang in splits]
    frames = []
    for group in groups:
        eligible = sorted(set.intersection(*(set(splits[lang]) for lang in group)))
        if len(eligible) < n_choices:
            raise EvaluationError(
                f"only {len(eligible)} document(s) of language(s) {group} have at least "
                f"{context_sentences + continuation_sentences} sentences"
                + (" in every language" if aligned else "")
                + f"; {n_choices} choices need at least {n_choices}. Use more documents or fewer sentences"
            )
        if n_items > len(eligible):
            warnings.warn(
                f"n_items={n_items} but only {len(eligible)} eligible documents for {group}; using all of them",
                stacklevel=2,
            )
        rng = np.random.default_rng(seed)
        picks = rng.permutation(len(eligible))[: min(n_items, len(eligible))]
        plan = []
        for pick in picks:
            others = [i for i in range(len(eligible)) if i != pick]
            wrong_picks = rng.choice(others, size=n_choices - 1, replace=False)
            label = int(rng.integers(n_choices))
            order = [int(i) for i in wrong_picks]
            order.insert(label, int(pick))
            plan.append((eligible[pick], label, [eligible[i] for i in order]))
        for lang in group:
            rows = []
            for key, label, choice_keys in plan:
                if distractors == "swapped":
                    wrong = iter(shuffles[lang][key])
                    choice_keys = [key if i == label else f"{key}#swapped{i}" for i in range(n_choices)]
                    choices = [splits[lang][key][1] if i == label else next(wrong) for i in range(n_choices)]
                else:
                    choices = [splits[lang][k][1] for k in choice_keys]
                rows.append((key, lang, key, splits[lang][key][0], choices, label, choice_keys))
            frames.append(pd.DataFrame(rows, columns=ITEM_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def continuation(
    model: torch.nn.Module,
    tokenizer,
    items: pd.DataFrame,
    language: str,
    *,
    normalization: str = "sum",
    max_length: int | None = 512,
    batch_size: int = 8,
    padding_side: str = "right",
    progress: bool = True,
) -> dict[str, Any]:
    """Continuation accuracy of ``language`` on items from :func:`build_continuation_items`."""
    missing = {"language", "context", "choices", "label"} - set(items.columns)
    if missing:
        raise EvaluationError(
            f"continuation items lack column(s) {sorted(missing)}; build them with build_continuation_items"
        )
    language = normalize_language(language)
    mine = items[items["language"].map(normalize_language) == language]
    if mine.empty:
        raise EvaluationError(
            f"no continuation items for language {language!r}; the items have {sorted(set(items['language']))}"
        )
    result = multiple_choice(
        model, tokenizer, mine["context"].tolist(), [list(c) for c in mine["choices"]], mine["label"].tolist(),
        normalization=normalization, max_length=max_length, batch_size=batch_size, padding_side=padding_side,
        progress=progress,
    )
    keys = (mine["key"] if "key" in mine.columns else mine.index).tolist()
    for detail, key in zip(result["details"], keys):
        detail["key"] = key
    result["per_item"].insert(1, "key", keys)
    return result
