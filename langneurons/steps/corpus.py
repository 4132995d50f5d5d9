"""Workflow steps: corpus sampling and the built-in demo model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

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


def train_demo_model_step(corpus_paths: Sequence[str], model_dir: str, settings: Mapping[str, Any]) -> None:
    from langneurons.demo_model import DemoModelConfig, train_demo_model

    frames = [corpora.read_corpus(path) for path in corpus_paths]
    docs = pd.concat(frames, ignore_index=True)
    config = DemoModelConfig.from_dict(dict(settings))
    train_demo_model(docs[docs["split"] == "train"], docs[docs["split"] == "eval"], model_dir, config)
