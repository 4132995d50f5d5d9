"""What every part of the evaluation shares: its errors, language codes, eval mode and input checks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pandas as pd
import torch

from langneurons.errors import EvaluationError, MissingDataError
from langneurons.eval_sources import ISO_ALIASES, normalize_language

__all__ = ["EvaluationError", "ISO_ALIASES", "MissingDataError", "normalize_language"]


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
