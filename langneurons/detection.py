"""One call from documents to language-specific neuron sets: :func:`detect`.

It runs what the workflow runs as separate steps, in memory: PLND scores of every document
(:func:`langneurons.scoring.score_documents`), per-language activation counts
(:class:`langneurons.selection.ActivationCounts`), then the sets
(:func:`langneurons.selection.neuron_sets`, and LAPE's with ``lape=``). Documents are scored a
chunk at a time and only their counts are kept, so memory does not grow with the number of
documents; counts of chunks add up exactly, and scores do not depend on the batching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from langneurons.neuronset import SITES, NeuronSet, NeuronSpace
from langneurons.scoring import score_documents
from langneurons.selection import (
    LAPE_OUTPUTS,
    ActivationCounts,
    SelectionError,
    lape_neurons_from_counts,
    merge_counts,
    neuron_sets,
)

__all__ = ["detect"]

#: Documents of one language: texts (ids 0, 1, ...), ``{doc_id: text}``, or a table with ``doc_id`` and ``text``.
Documents = Sequence[str] | Mapping[Any, str] | pd.DataFrame


def _ids_and_texts(language: str, documents: Documents) -> tuple[list[Any], list[str]]:
    if isinstance(documents, pd.DataFrame):
        missing = [column for column in ("doc_id", "text") if column not in documents.columns]
        if missing:
            raise SelectionError(
                f"documents[{language!r}] is a table without column(s) {missing}; give doc_id and text columns "
                "(a corpus table of langneurons.corpora) or a list of texts"
            )
        ids, texts = documents["doc_id"].tolist(), documents["text"].tolist()
    elif isinstance(documents, Mapping):
        ids, texts = list(documents), list(documents.values())
    elif isinstance(documents, Sequence) and not isinstance(documents, str):
        ids, texts = list(range(len(documents))), list(documents)
    else:
        raise SelectionError(
            f"documents[{language!r}] is a {type(documents).__name__}; give a list of texts, a {{doc_id: text}} "
            "mapping or a table with doc_id and text columns"
        )
    if not texts:
        raise SelectionError(f"documents[{language!r}] is empty; every language needs documents")
    not_text = next((i for i, text in zip(ids, texts) if not isinstance(text, str) or not text.strip()), None)
    if not_text is not None:
        raise SelectionError(f"documents[{language!r}] has document {not_text!r} without text; drop it")
    if len(set(ids)) != len(ids):
        raise SelectionError(f"documents[{language!r}] repeats a document id; ids must be unique")
    return [i if isinstance(i, int) else str(i) for i in ids], texts


def _top_k_per_site(top_k: float | Mapping[str, float], sites: Sequence[str]) -> dict[str, float]:
    if not isinstance(top_k, Mapping):
        return {site: top_k for site in sites}
    missing = [site for site in sites if site not in top_k]
    if missing:
        raise SelectionError(f"top_k has no value for site(s) {missing}; give one per site of sites={list(sites)}")
    return {site: top_k[site] for site in sites}


def detect(
    model: Any,
    tokenizer: Any,
    documents: Mapping[str, Documents],
    *,
    top_k: float | Mapping[str, float],
    rho: float,
    set_kinds: Sequence[str] = ("specific",),
    sites: Sequence[str] = SITES,
    method: str = "paper",
    lape: Mapping[str, float] | None = None,
    max_length: int = 512,
    batch_size: int = 8,
    chunk_docs: int = 64,
    chunk_bytes: int | None = None,
    progress: bool = True,
) -> NeuronSet:
    """The language-specific neurons of ``model``, from each language's documents, as one :class:`NeuronSet`.

    ``documents``: ``{language: documents}``, each a list of texts, a ``{doc_id: text}``
    mapping or a table with ``doc_id`` and ``text`` columns (a corpus of
    :mod:`langneurons.corpora`). ``top_k``: a neuron is activated for a document when it is
    among the document's top-k of its layer and site (a count, or a fraction of the site's
    size; one value, or one per site). ``rho``: the fraction of a language's documents that
    must activate a neuron. ``set_kinds``: the rules of :func:`langneurons.selection.neuron_sets`
    (``specific``: activated in the language but not in every language). ``lape``: LAPE's
    options (``{}`` for its defaults) to add its FFN sets as set kind ``lape``. ``method``,
    ``max_length`` and ``chunk_bytes`` are :func:`~langneurons.scoring.score_documents`'s;
    ``batch_size`` and ``chunk_docs`` (documents scored before their counts are kept) change
    speed and memory, never the result.

    Returns the sets of every language and kind (``sets.by_language()["fr"]``), checked
    against the model, carrying the parameters that made them (``sets.params``) and the ids
    of the documents of each language (``sets.doc_ids``).
    """
    if not isinstance(documents, Mapping) or not documents:
        raise SelectionError("documents must map each language to its documents, e.g. {'fr': [...], 'zh': [...]}")
    if chunk_docs < 1:
        raise SelectionError(f"chunk_docs={chunk_docs!r}: give a number of documents >= 1")
    sites = list(dict.fromkeys(sites))
    unknown = [site for site in sites if site not in SITES]
    if unknown:
        raise SelectionError(f"sites {unknown} are unknown; use some of {', '.join(SITES)}")
    per_site = _top_k_per_site(top_k, sites)
    corpus = {str(language): _ids_and_texts(str(language), docs) for language, docs in documents.items()}
    scored = [*sites, *(LAPE_OUTPUTS if lape is not None else ())]
    per_language: dict[str, ActivationCounts] = {}
    bar = tqdm(total=sum(len(texts) for _, texts in corpus.values()), desc="PLND", unit="doc", disable=not progress)
    with bar:
        for language, (_, texts) in corpus.items():
            bar.set_postfix(language=language)
            chunks = []
            for start in range(0, len(texts), chunk_docs):
                chunk = texts[start : start + chunk_docs]
                scores = score_documents(
                    model, tokenizer, chunk, sites=scored, method=method, batch_size=batch_size,
                    max_length=max_length, chunk_bytes=chunk_bytes, progress=False,
                )  # fmt: skip
                chunks.append(ActivationCounts.from_scores(scores, per_site))
                bar.update(len(chunk))
            per_language[language] = merge_counts(chunks)
    set_kinds = list(dict.fromkeys(set_kinds))
    table = neuron_sets(per_language, rho, set_kinds)
    if lape is not None:
        table = pd.concat([table, lape_neurons_from_counts(per_language, **lape)], ignore_index=True)
    params = {
        "model": getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__,
        "method": method,
        "sites": sites,
        "top_k": per_site,
        "top_k_per_layer": next(iter(per_language.values())).top_k,
        "rho": rho,
        "set_kinds": set_kinds,
        "lape": None if lape is None else dict(lape),
        "max_length": max_length,
        "n_docs": {language: len(texts) for language, (_, texts) in corpus.items()},
    }
    doc_ids = {language: ids for language, (ids, _) in corpus.items()}
    return NeuronSet(table, NeuronSpace.of(model), params=params, doc_ids=doc_ids)

