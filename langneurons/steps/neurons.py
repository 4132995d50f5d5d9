"""Workflow steps: activation counts per language, and the neuron sets of all languages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from langneurons.interventions import layer_stages
from langneurons.io import provenance, write_json_atomic, write_parquet_atomic
from langneurons.selection import ActivationCounts, neuron_sets, set_summary
from langneurons.steps.common import ConfigError
from langneurons.steps.scoring import load_scores


def count_activations_step(
    shard_paths: Sequence[str], top_k: Mapping[str, float], language: str, out_path: str
) -> None:
    scores, doc_ids = load_scores(shard_paths)
    if len(set(doc_ids)) != len(doc_ids):
        raise ConfigError(f"score shards of {language} overlap: a document was scored twice")
    counts = ActivationCounts.from_scores(scores, {site: top_k[site] for site in scores})
    counts.save(out_path, provenance({"top_k": dict(top_k)}, language=language, n_docs=len(doc_ids)))


def neuron_sets_step(
    count_paths: Mapping[str, str],
    rho: float,
    set_kinds: Sequence[str],
    stages: Mapping[str, int | None],
    neurons_path: str,
    summary_path: str,
    overlap_path: str,
    record_path: str,
) -> None:
    per_language = {lang: ActivationCounts.load(path) for lang, path in count_paths.items()}
    table = neuron_sets(per_language, rho, set_kinds)
    first = next(iter(per_language.values()))
    sizes = {site: tensor.shape[1] for site, tensor in first.counts.items()}
    n_layers = next(iter(first.counts.values())).shape[0]
    summary, overlap = set_summary(table, sorted(per_language), sizes, n_layers)
    summary["stage"] = summary["layer"].map(dict(enumerate(layer_stages(n_layers, **stages))))
    write_parquet_atomic(table, neurons_path)
    write_parquet_atomic(summary, summary_path)
    write_parquet_atomic(overlap, overlap_path)
    write_json_atomic(
        provenance(
            {"rho": rho, "set_kinds": list(set_kinds), "stages": dict(stages)},
            languages=sorted(per_language),
            n_docs={lang: c.n_docs for lang, c in per_language.items()},
            top_k=first.top_k,
        ),
        record_path,
    )
