"""Language identification of generated text (py3langid), restricted to the experiment's languages."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from langneurons.evaluation.common import EvaluationError, normalize_language

#: py3langid labels folded onto the language they are a variety of.
LABEL_ALIASES: dict[str, str] = {"arz": "ar", "ary": "ar"}
#: Label for a text without letters (empty, digits, punctuation): it is in no language, so never in L.
UNDETERMINED = "und"


@functools.lru_cache(maxsize=1)
def _langid_model_labels() -> tuple[str, ...]:
    return tuple(_new_identifier().labels)


def _new_identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    if hasattr(LanguageIdentifier, "from_model_file"):
        return LanguageIdentifier.from_model_file(MODEL_FILE)
    return LanguageIdentifier.from_pickled_model(MODEL_FILE)  # older py3langid releases


@functools.lru_cache(maxsize=16)
def _identifier(languages: tuple[str, ...] | None):
    """A private identifier restricted to ``languages``.

    Private, because ``py3langid.langid.set_languages`` would restrict the
    module-global identifier that the corpus filters also use.
    """
    identifier = _new_identifier()
    if languages is not None:
        identifier.set_languages(list(languages))
    return identifier


def _check_langid_languages(languages: Sequence[str] | None) -> tuple[str, ...] | None:
    if languages is None:
        return None
    codes = tuple(sorted({normalize_language(code) for code in languages}))
    known = set(_langid_model_labels())
    unknown = [code for code in codes if code not in known]
    if unknown:
        raise EvaluationError(
            f"language code(s) {unknown} are unknown to py3langid, so generation fidelity cannot be measured "
            f"for them; py3langid knows {', '.join(sorted(known))}. Use ISO 639-1 codes (e.g. 'zh', 'sw') "
            "or drop these languages from the fidelity metric"
        )
    if not codes:
        raise EvaluationError("languages is empty; pass the experiment's language list (or None for all)")
    return codes


def identify_languages(texts: Sequence[str], languages: Sequence[str] | None = None) -> list[str]:
    """py3langid label of each text, restricted to ``languages`` (None: all it knows).

    Restricting to the experiment's languages matters: on short generations
    an unrestricted classifier confuses close languages (es/gl, sw/rw), which
    would count as infidelity that no neuron caused. Texts without letters
    (empty, or only digits, punctuation and symbols) get :data:`UNDETERMINED`:
    a classifier would give them its likeliest language (``"12345 !!!"`` is
    ``en``), and a model that only repeats numbers would look fluent.
    """
    identifier = _identifier(_check_langid_languages(languages))
    labels = []
    for text in texts:
        if not any(ch.isalpha() for ch in text):
            labels.append(UNDETERMINED)
            continue
        label, _score = identifier.classify(text)
        labels.append(LABEL_ALIASES.get(label, label))
    return labels
