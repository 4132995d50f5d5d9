"""What every part of the evaluation shares: its errors, language codes, eval mode and input checks."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pandas as pd
import torch


class EvaluationError(ValueError):
    """Bad evaluation input; the message names the field, the value and the fix."""


class MissingDataError(EvaluationError):
    """A metric was called without the data it needs."""


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


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EvaluationError(f"batch_size={batch_size!r} must be a positive integer")


def _model_max_length(model: torch.nn.Module, default: int = 2048) -> int:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def _resolve_max_length(model: torch.nn.Module, max_length: int | None) -> int:
    limit = _model_max_length(model)
    if max_length is None:
        return limit
    if not isinstance(max_length, int) or max_length < 2:
        raise EvaluationError(f"max_length={max_length!r} must be an integer >= 2")
    return min(max_length, limit)


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise EvaluationError(f"{what} must be a sequence of strings, not one string")
    texts = list(texts)
    if not texts:
        raise EvaluationError(f"{what} is empty; pass at least one text")
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad:
        raise EvaluationError(f"{what} has non-string entries at positions {bad[:5]}")
    return texts


def _select_docs(docs: pd.DataFrame, split: str | None, what: str) -> pd.DataFrame:
    if not isinstance(docs, pd.DataFrame):
        raise EvaluationError(f"{what} must be a DataFrame with columns language, text (a corpus table)")
    missing = {"language", "text"} - set(docs.columns)
    if missing:
        raise EvaluationError(f"{what} lacks column(s) {sorted(missing)}; pass a corpus table (read_corpus)")
    if split is not None and "split" in docs.columns:
        docs = docs[docs["split"] == split]
        if docs.empty:
            raise EvaluationError(f"{what} has no documents of split {split!r}; pass split=None to use all rows")
    if docs.empty:
        raise EvaluationError(f"{what} is empty")
    docs = docs.copy()
    docs["language"] = docs["language"].map(normalize_language)
    return docs
