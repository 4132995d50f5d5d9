"""Workflow steps: activation counts per language, the neuron sets of all languages, their stability."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from langneurons.conditions import layer_stages
from langneurons.errors import ConfigError
from langneurons.io import provenance, write_json_atomic, write_parquet_atomic
from langneurons.scorefiles import ScoreShards, release_large_blocks
from langneurons.selection import (
    AGREEMENT_COLUMNS,
    ActivationCounts,
    detector_agreement,
    lape_neurons_from_counts,
    neuron_sets,
    set_stability,
    set_summary,
)


def count_activations_step(
    shard_paths: Sequence[str], top_k: Mapping[str, float], language: str, out_path: str
) -> None:
    """Activation counts of one language, reading its scores one site at a time."""
    release_large_blocks()
    scores = ScoreShards(shard_paths)
    if len(set(scores.doc_ids)) != scores.n_docs:
        raise ConfigError(f"score shards of {language} overlap: a document was scored twice")
    counts = ActivationCounts.from_scores(scores, top_k)
    counts.save(out_path, provenance({"top_k": dict(top_k)}, language=language, n_docs=scores.n_docs))


def neuron_sets_step(
    count_paths: Mapping[str, str],
    rho: float,
    set_kinds: Sequence[str],
    stages: Mapping[str, int | None],
    neurons_path: str,
    summary_path: str,
    overlap_path: str,
    record_path: str,
    lape: Mapping[str, float] | None = None,
    agreement_path: str | None = None,
) -> None:
    """The PLND set kinds of every language, plus LAPE's sets (set_kind "lape") when ``lape`` holds its options.

    ``agreement_path`` receives, per language, the FFN Jaccard of LAPE's set
    and PLND's ``specific`` set (or the first built kind); empty without LAPE.
    """
    per_language = {lang: ActivationCounts.load(path) for lang, path in count_paths.items()}
    table = neuron_sets(per_language, rho, set_kinds)
    agreement = pd.DataFrame(columns=list(AGREEMENT_COLUMNS))
    if lape is not None:
        table = pd.concat([table, lape_neurons_from_counts(per_language, **lape)], ignore_index=True)
        plnd_kind = "specific" if "specific" in set_kinds else set_kinds[0]
        agreement = detector_agreement(table, plnd_kind, "lape")
    first = next(iter(per_language.values()))
    sizes = {site: tensor.shape[1] for site, tensor in first.counts.items()}
    n_layers = next(iter(first.counts.values())).shape[0]
    summary, overlap = set_summary(table, sorted(per_language), sizes, n_layers)
    summary["stage"] = summary["layer"].map(dict(enumerate(layer_stages(n_layers, **stages))))
    write_parquet_atomic(table, neurons_path)
    write_parquet_atomic(summary, summary_path)
    write_parquet_atomic(overlap, overlap_path)
    if agreement_path:
        write_parquet_atomic(agreement, agreement_path)
    write_json_atomic(
        provenance(
            {"rho": rho, "set_kinds": list(set_kinds), "stages": dict(stages), "lape": lape},
            languages=sorted(per_language),
            n_docs={lang: c.n_docs for lang, c in per_language.items()},
            top_k=first.top_k,
        ),
        record_path,
    )


def stability_step(
    shard_paths: Mapping[str, Sequence[str]],
    top_k: Mapping[str, float],
    rho: float,
    settings: Mapping[str, Any],
    seed: int,
    out_path: str,
    record_path: str,
) -> None:
    """Jaccard of the sets from disjoint halves and from subsamples of the detection documents (cached scores).

    The scores are read one language and one site at a time (LAPE's counts, which stability does not use,
    never), so the memory this takes is bounded by one language's scores, whatever the number of languages.
    """
    release_large_blocks()
    scores = {lang: ScoreShards(paths) for lang, paths in shard_paths.items()}
    table = set_stability(
        scores,
        top_k,
        rho,
        set_kind=settings["set_kind"],
        n_docs_grid=settings["n_docs"],
        seed=seed,
        replicates=settings["replicates"],
        n_docs={lang: shards.n_docs for lang, shards in scores.items()},
    )
    if table["jaccard"].isna().all():
        raise ConfigError(
            f"every {settings['set_kind']!r} set compared for stability is empty: lower selection.rho or raise "
            "selection.top_k, or compare another selection.stability.set_kind"
        )
    write_parquet_atomic(table, out_path)
    write_json_atomic(
        provenance(
            {"top_k": dict(top_k), "rho": rho, "stability": dict(settings), "seed": seed},
            n_docs={lang: shards.n_docs for lang, shards in scores.items()},
        ),
        record_path,
    )
