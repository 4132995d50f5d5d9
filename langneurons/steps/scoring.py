"""Workflow step: PLND scores of one shard of a language's detection documents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from langneurons import corpora
from langneurons.io import provenance, read_json
from langneurons.scorefiles import ScoreShards, write_shard
from langneurons.scoring import COUNT_OUTPUTS, score_documents
from langneurons.steps.common import ConfigError, load_configured_model, model_record


def shard_documents(docs: pd.DataFrame, shard: int, n_shards: int) -> pd.DataFrame:
    """Every ``n_shards``-th detection document, starting at ``shard``, in doc_id order."""
    if not 0 <= shard < n_shards:
        raise ConfigError(f"shard {shard} is out of range for scoring.shards = {n_shards}")
    detect = docs[docs["split"] == "detect"].sort_values("doc_id", ignore_index=True)
    return detect.iloc[shard::n_shards].reset_index(drop=True)


def _corpus_hash(corpus_path: str) -> str | None:
    manifest = Path(corpus_path).with_suffix(".manifest.json")
    if not manifest.exists():
        return None
    return read_json(manifest).get("sha256")


def score_shard_step(
    corpus_path: str,
    model_params: Mapping[str, Any],
    model_dir: str | None,
    shard: int,
    n_shards: int,
    scoring: Mapping[str, Any],
    out_path: str,
    threads: int | None = None,
) -> None:
    """PLND scores of one shard of a language's detection documents, as safetensors in
    ``scoring["storage_dtype"]`` (float32 when unset)."""
    if threads:
        torch.set_num_threads(threads)
    docs = shard_documents(corpora.read_corpus(corpus_path), shard, n_shards)
    if docs.empty:
        raise ConfigError(
            f"shard {shard} of {n_shards} of {corpus_path} has no detection documents: lower scoring.shards "
            "or raise corpus.split_sizes.detect"
        )
    model, tokenizer = load_configured_model(model_params, model_dir)
    scores = score_documents(
        model,
        tokenizer,
        docs["text"].tolist(),
        sites=scoring["sites"],
        method=scoring["method"],
        batch_size=scoring["batch_size"],
        max_length=scoring["max_length"],
        chunk_bytes=scoring.get("chunk_bytes"),
        qk_mode=scoring.get("qk_mode", "exact"),
    )
    record = provenance(
        {"scoring": dict(scoring), "shard": shard, "n_shards": n_shards},
        **model_record(model_params, model_dir),
        corpus_sha256=_corpus_hash(corpus_path),
    )
    storage_dtype = scoring.get("storage_dtype", "float32")
    write_shard(out_path, scores, docs["doc_id"].tolist(), record, storage_dtype, counts=COUNT_OUTPUTS)


def load_scores(paths: Sequence[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every site of a language's score shards; returns ``({site: [docs, layers, neurons]}, doc_ids)``."""
    shards = ScoreShards(paths)
    return dict(shards.items()), shards.doc_ids
