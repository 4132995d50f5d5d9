"""Where the evaluation benchmarks live (hub datasets, local file names) and one code per language.

Torch-free, so that the workflow can check its evaluation sources when it is parsed, before any job;
:mod:`langneurons.evaluation.benchmarks` reads the data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from langneurons.errors import EvaluationError

#: ISO 639-2/3 codes (and a few common names) -> the ISO 639-1 code that
#: py3langid, the benchmarks and the corpus use. Script/region suffixes
#: ("zh-Hans", "zh_CN", "zho_Hans", "swh_Latn") are stripped first.
ISO_ALIASES: dict[str, str] = {
    "eng": "en", "deu": "de", "ger": "de", "fra": "fr", "fre": "fr", "spa": "es", "rus": "ru",
    "zho": "zh", "chi": "zh", "cmn": "zh", "jpn": "ja", "jap": "ja", "tha": "th", "ara": "ar",
    "arb": "ar", "swa": "sw", "swh": "sw", "vie": "vi", "ita": "it", "por": "pt", "nld": "nl",
    "dut": "nl", "pol": "pl", "tur": "tr", "hin": "hi", "ben": "bn", "tel": "te", "tam": "ta",
    "urd": "ur", "ind": "id", "kor": "ko", "ell": "el", "gre": "el", "ron": "ro", "rum": "ro",
    "est": "et", "hat": "ht", "que": "qu", "ukr": "uk", "fas": "fa", "pes": "fa", "per": "fa",
    "heb": "he",
}


def normalize_language(code: str) -> str:
    """'zh-Hans', 'zh_CN', 'zho_Hans', 'ZH', 'jap' -> 'zh' / 'ja': one code per language everywhere."""
    if not isinstance(code, str) or not code.strip():
        raise EvaluationError(f"language code {code!r} is not a non-empty string; use an ISO 639-1 code such as 'fr'")
    base = re.split(r"[-_]", code.strip(), maxsplit=1)[0].lower()
    return ISO_ALIASES.get(base, base)


#: XLSum's hub config names for ISO codes.
XLSUM_NAMES = {
    "en": "english", "fr": "french", "es": "spanish", "ru": "russian", "zh": "chinese_simplified",
    "ja": "japanese", "ar": "arabic", "sw": "swahili", "th": "thai", "vi": "vietnamese", "hi": "hindi",
    "bn": "bengali", "id": "indonesian", "ko": "korean", "pt": "portuguese", "tr": "turkish", "uk": "ukrainian",
    "ur": "urdu", "fa": "persian", "te": "telugu", "ta": "tamil", "mr": "marathi", "ne": "nepali",
    "so": "somali", "ha": "hausa", "yo": "yoruba", "ig": "igbo", "am": "amharic", "cy": "welsh",
}


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives on the hub and how local copies are laid out."""

    hub_path: str
    hub_config: Callable[[str], str]
    hub_split: str
    local_names: Callable[[str, str | None], list[str]]
    local_split: str | None
    languages: tuple[str, ...]


BENCHMARKS: dict[str, Benchmark] = {
    "mgsm": Benchmark(
        "juletxara/mgsm", lambda lang: lang, "test",
        lambda lang, split: [f"{lang}.tsv", f"mgsm_{lang}.tsv"], None,
        ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"),
    ),
    "xquad": Benchmark(
        "google/xquad", lambda lang: f"xquad.{lang}", "validation",
        lambda lang, split: [f"xquad.{lang}.json", f"{lang}.json", f"xquad.{lang}.jsonl", f"{lang}.jsonl"], None,
        ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"),
    ),
    "xcopa": Benchmark(
        "cambridgeltl/xcopa", lambda lang: lang, "test",
        lambda lang, split: [f"{split}.{lang}.jsonl", f"{lang}.jsonl"], "test",
        ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh"),
    ),
    "xcsqa": Benchmark(
        "INK-USC/xcsr", lambda lang: f"X-CSQA-{'jap' if lang == 'ja' else lang}", "validation",
        lambda lang, split: [
            f"{code}/{split}.jsonl" for code in dict.fromkeys((lang, "jap" if lang == "ja" else lang))
        ] + [f"{split}.{lang}.jsonl", f"{lang}.jsonl"],
        "dev",
        ("ar", "de", "en", "es", "fr", "hi", "it", "ja", "nl", "pl", "pt", "ru", "sw", "ur", "vi", "zh"),
    ),
    "xlsum": Benchmark(
        "csebuetnlp/xlsum", lambda lang: XLSUM_NAMES.get(lang, lang), "test",
        lambda lang, split: [f"{XLSUM_NAMES.get(lang, lang)}_{split}.jsonl", f"{lang}_{split}.jsonl", f"{lang}.jsonl"],
        "test",
        tuple(sorted(XLSUM_NAMES)),
    ),
}


def local_benchmark_file(name: str, language: str, source: str | Path, split: str | None = None) -> Path | None:
    """The local file of benchmark ``name`` in ``language``: ``source`` itself if it is a file, else the first of
    the usual names (:attr:`Benchmark.local_names`) in the folder ``source``; None when the folder has none."""
    source = Path(source)
    if source.is_file():
        return source
    for candidate in local_candidates(name, language, split):
        if (source / candidate).is_file():
            return source / candidate
    return None


def local_candidates(name: str, language: str, split: str | None = None) -> list[str]:
    """The file names looked for in a benchmark folder (X-CSR's ``dev`` split is also found as ``validation``)."""
    bench = BENCHMARKS[name]
    split = split or bench.local_split
    candidates = bench.local_names(language, split)
    if name == "xcsqa" and split == "dev":
        candidates += bench.local_names(language, "validation")
    return candidates


def benchmark_languages(name: str, source: str | Path | None, split: str | None, languages: Sequence[str]) -> list[str]:
    """Which of ``languages`` benchmark ``name`` has: on the hub, its configs; in a local folder, those with a file
    (a single file serves every language)."""
    if source is None:
        return [lang for lang in languages if normalize_language(lang) in BENCHMARKS[name].languages]
    return [lang for lang in languages if local_benchmark_file(name, normalize_language(lang), source, split)]
