"""Workflow steps: which token belongs to which language, and the logit-lens language ratio per layer."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from safetensors.torch import save_file

from langneurons import corpora
from langneurons.batching import encode
from langneurons.conditions import ENGLISH
from langneurons.interventions import deactivate
from langneurons.io import atomic_path, open_safetensors, provenance, read_parquet, write_parquet_atomic
from langneurons.logit_lens import (
    TokenLanguages,
    batches_from_texts,
    count_tokens,
    language_ratio,
    token_language_table,
)
from langneurons.selection import language_set
from langneurons.steps.common import ConfigError, load_configured_model, model_record

#: Columns every per-job logit-lens table adds to :data:`langneurons.logit_lens.RATIO_COLUMNS`.
CONDITION_COLUMNS = ("condition", "set_kind", "n_neurons_deactivated", "n_docs")


def load_tokenizer(tokenizer_params: Mapping[str, Any], model_dir: str | None):
    """The tokenizer of the analysed model: of the folder the workflow made (the demo model, a converted GGUF),
    else of model.id at its revision."""
    from transformers import AutoTokenizer

    if model_dir is not None:
        return AutoTokenizer.from_pretrained(model_dir)
    return AutoTokenizer.from_pretrained(tokenizer_params["id"], revision=tokenizer_params.get("revision"))


def corpus_token_counts(tokenizer: Any, texts: Sequence[str], vocab_size: int, batch: int = 256) -> torch.Tensor:
    """Occurrences of every token id in ``texts`` (whole documents, no special tokens), ``[vocab_size]`` int64."""
    total = torch.zeros(vocab_size, dtype=torch.long)
    for start in range(0, len(texts), batch):
        encoded = encode(tokenizer, texts[start : start + batch], specials="none")  # whole: counted, never run
        flat = torch.tensor([token for ids in encoded for token in ids], dtype=torch.long)
        total += count_tokens(flat, None, vocab_size)
    return total


def token_languages_step(
    corpus_paths: Mapping[str, str],
    tokenizer_params: Mapping[str, Any],
    model_dir: str | None,
    splits: Sequence[str],
    ratio: float,
    min_count: int,
    out_path: str,
) -> TokenLanguages:
    """Count every token in each language's corpus (the given splits) and attribute tokens to languages.

    Writes safetensors with ``labels`` ``[vocab]`` (index into the ``languages`` metadata, -1 = other)
    and ``counts`` ``[languages, vocab]``; the header holds the languages, the attribution rule and
    provenance. The ``eval`` split, on which the ratio is measured, is never counted by default.
    """
    tokenizer = load_tokenizer(tokenizer_params, model_dir)
    vocab_size = len(tokenizer)
    counts: dict[str, torch.Tensor] = {}
    n_docs: dict[str, int] = {}
    for language, path in corpus_paths.items():
        docs = corpora.read_corpus(path)
        docs = docs[docs["split"].isin(list(splits))].sort_values("doc_id")
        if docs.empty:
            raise ConfigError(
                f"{path} has no documents in splits {list(splits)} to count tokens of {language!r}: "
                "add splits to logit_lens.token_splits or raise corpus.split_sizes"
            )
        counts[language] = corpus_token_counts(tokenizer, docs["text"].tolist(), vocab_size)
        n_docs[language] = len(docs)
    table = token_language_table(counts, ratio=ratio, min_count=min_count, vocab_size=vocab_size)
    print(table.summary().to_string(index=False))
    record = provenance(
        {"splits": list(splits), "token_ratio": ratio, "min_count": min_count},
        **model_record(tokenizer_params, model_dir),
        n_docs=n_docs,
    )
    metadata = {
        "languages": json.dumps(list(table.languages)),
        "source": table.source,
        "provenance": json.dumps(record, default=str),
    }
    tensors = {"labels": table.labels.contiguous(), "counts": torch.stack([counts[lang] for lang in table.languages])}
    with atomic_path(out_path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return table


def load_token_languages(path: str) -> TokenLanguages:
    """The :class:`TokenLanguages` that :func:`token_languages_step` wrote."""
    with open_safetensors(path) as handle:
        metadata = handle.metadata() or {}
        labels = handle.get_tensor("labels")
    return TokenLanguages(tuple(json.loads(metadata["languages"])), labels, source=metadata.get("source", ""))


def eval_documents(docs: pd.DataFrame, n_docs: int | None) -> pd.DataFrame:
    """The ``eval`` documents in doc_id order, the first ``n_docs`` of them (all when None)."""
    selected = docs[docs["split"] == "eval"].sort_values("doc_id", ignore_index=True)
    return selected if n_docs is None else selected.head(n_docs)


def logit_lens_step(
    corpus_path: str,
    token_table_path: str,
    model_params: Mapping[str, Any],
    model_dir: str | None,
    language: str,
    condition: str,
    settings: Mapping[str, Any],
    out_path: str,
    neurons_path: str | None = None,
    set_kind: str | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """Language ratio per layer on ``language``'s eval documents, under ``condition``.

    ``condition`` is ``none`` or ``<set_kind>_deactivated``: then ``language``'s ``set_kind``
    neurons from ``neurons_path`` are zeroed (:func:`langneurons.interventions.deactivate`) while
    decoding. Writes the tidy table of :data:`langneurons.logit_lens.RATIO_COLUMNS` plus
    :data:`CONDITION_COLUMNS`, with a provenance record in the Parquet metadata.
    """
    if threads:
        torch.set_num_threads(threads)
    deactivating = condition != "none"
    if deactivating and (neurons_path is None or condition != f"{set_kind}_deactivated"):
        raise ConfigError(f"condition {condition!r} needs a neuron table and set kind {set_kind!r} to match it")
    docs = eval_documents(corpora.read_corpus(corpus_path), settings.get("n_docs"))
    if docs.empty:
        raise ConfigError(
            f"{corpus_path} has no eval documents for the logit lens: raise corpus.split_sizes.eval above 0"
        )
    table = load_token_languages(token_table_path)
    model, tokenizer = load_configured_model(model_params, model_dir)
    neurons = pd.DataFrame(columns=["layer", "site", "index"])
    if deactivating:
        neurons = language_set(read_parquet(neurons_path), language, set_kind)
    batches = batches_from_texts(tokenizer, docs["text"].tolist(), settings["batch_size"], settings["max_length"])
    with deactivate(model, neurons):
        ratios = language_ratio(
            model,
            batches,
            table,
            language,
            english=ENGLISH,
            top_k=settings["top_k"],
            final_norm=settings["final_norm"],
            skip_first_tokens=settings.get("skip_first_tokens", 0),
        )
    ratios["condition"] = condition
    ratios["set_kind"] = set_kind if deactivating else None
    ratios["n_neurons_deactivated"] = len(neurons)
    ratios["n_docs"] = len(docs)
    ratios.attrs["provenance"] = provenance(
        {"logit_lens": dict(settings), "condition": condition, "set_kind": set_kind},
        **model_record(model_params, model_dir),
        token_table=table.source,
        doc_ids=docs["doc_id"].tolist(),
    )
    write_parquet_atomic(ratios, out_path)
    return ratios


def logit_lens_table_step(paths: Sequence[str], out_path: str) -> pd.DataFrame:
    """Every language's and condition's ratio table in one (``results/<run>/logit_lens/all.parquet``)."""
    frames = [read_parquet(path) for path in paths]
    for frame in frames:
        frame.attrs = {}
    table = pd.concat(frames, ignore_index=True)
    write_parquet_atomic(table, out_path)
    return table
