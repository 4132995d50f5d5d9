"""Workflow step: PLND scores of one shard of a language's detection documents."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save_file

from langneurons import corpora
from langneurons.io import atomic_path, provenance, read_json, read_safetensors
from langneurons.scoring import score_documents
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
    """PLND scores of one shard of a language's detection documents, as safetensors."""
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
    )
    record = provenance(
        {"scoring": dict(scoring), "shard": shard, "n_shards": n_shards},
        **model_record(model_params, model_dir),
        corpus_sha256=_corpus_hash(corpus_path),
    )
    metadata = {"doc_ids": json.dumps(docs["doc_id"].tolist()), "provenance": json.dumps(record, default=str)}
    with atomic_path(out_path) as tmp:
        save_file({site: tensor.contiguous() for site, tensor in scores.items()}, str(tmp), metadata=metadata)


def load_scores(paths: Sequence[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Concatenate score shards; returns ``({site: [docs, layers, neurons]}, doc_ids)``."""
    parts: dict[str, list[torch.Tensor]] = {}
    doc_ids: list[str] = []
    for path in paths:
        tensors, metadata = read_safetensors(path)
        doc_ids += json.loads(metadata["doc_ids"])
        for site, tensor in tensors.items():
            parts.setdefault(site, []).append(tensor)
    return {site: torch.cat(chunks) for site, chunks in parts.items()}, doc_ids
