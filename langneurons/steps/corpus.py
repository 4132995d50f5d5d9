"""Workflow step: one language's corpus sample."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langneurons import corpora


def sample_corpus_step(
    source: Mapping[str, Any],
    language: str,
    split_sizes: Mapping[str, Any],
    seed: int,
    filters: Mapping[str, Any],
    parquet_path: str,
    manifest_path: str,
) -> None:
    sample = corpora.sample_language(source, language, split_sizes, seed, filters)
    params = {"source": dict(source), "split_sizes": dict(split_sizes), "seed": seed, "filters": dict(filters)}
    corpora.write_corpus(sample, parquet_path, manifest_path, params)
