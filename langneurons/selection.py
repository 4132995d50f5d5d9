"""From PLND scores to activation frequencies and language-specific neuron sets.

A neuron is *activated* for a document when it is among that document's top-k
neurons of its (layer, site). Per language we keep, for every neuron, the
number of documents in which it was activated (and the sum of its importance),
so that shards can be summed and any consensus threshold rho applied later
without rescoring. Everything here is vectorised over neurons.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from langneurons.architectures import SITES
from langneurons.io import atomic_path

SET_KINDS: tuple[str, ...] = ("activated", "specific", "exclusive")
NEURON_COLUMNS: tuple[str, ...] = ("language", "set_kind", "layer", "site", "index", "frequency", "mean_importance")


class SelectionError(ValueError):
    """Neuron selection got inconsistent or unusable inputs."""


def resolve_top_k(top_k: float, size: int, site: str = "") -> int:
    """A top-k given as a count (>= 1) or as a fraction of the site's size (0 < k < 1)."""
    if isinstance(top_k, bool) or not top_k > 0:
        raise SelectionError(f"top_k for site {site!r} is {top_k!r}: give a count >= 1 or a fraction in (0, 1)")
    count = math.ceil(top_k * size) if top_k < 1 else int(top_k)
    if top_k >= 1 and top_k != int(top_k):
        raise SelectionError(f"top_k for site {site!r} is {top_k!r}: a count must be a whole number")
    if count > size:
        raise SelectionError(f"top_k for site {site!r} is {count}, but a layer has only {size} {site} neurons")
    return count


def top_k_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """``[docs, layers, neurons]`` scores -> bool mask of each (doc, layer)'s top ``count`` neurons."""
    indices = torch.topk(scores, count, dim=-1, sorted=False).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, indices, True)


@dataclass
class ActivationCounts:
    """Per-neuron activation counts of one language over ``n_docs`` documents.

    ``counts[site]`` and ``importance_sum[site]`` are ``[layers, neurons]``.
    """

    counts: dict[str, torch.Tensor]
    importance_sum: dict[str, torch.Tensor]
    n_docs: int
    top_k: dict[str, int]

    @classmethod
    def from_scores(cls, scores: Mapping[str, torch.Tensor], top_k: Mapping[str, float]) -> ActivationCounts:
        counts, importance, resolved = {}, {}, {}
        for site, tensor in scores.items():
            resolved[site] = resolve_top_k(top_k[site], tensor.shape[-1], site)
            counts[site] = top_k_mask(tensor, resolved[site]).sum(dim=0, dtype=torch.int64)
            importance[site] = tensor.double().sum(dim=0)
        n_docs = next(iter(scores.values())).shape[0]
        return cls(counts, importance, n_docs, resolved)

    @classmethod
    def empty_like(cls, other: ActivationCounts) -> ActivationCounts:
        return cls(
            {s: torch.zeros_like(t) for s, t in other.counts.items()},
            {s: torch.zeros_like(t) for s, t in other.importance_sum.items()},
            0,
            dict(other.top_k),
        )

    def __add__(self, other: ActivationCounts) -> ActivationCounts:
        if self.top_k != other.top_k or set(self.counts) != set(other.counts):
            raise SelectionError(
                f"cannot add activation counts made with different sites/top-k: {self.top_k} vs {other.top_k}"
            )
        return ActivationCounts(
            {s: self.counts[s] + other.counts[s] for s in self.counts},
            {s: self.importance_sum[s] + other.importance_sum[s] for s in self.counts},
            self.n_docs + other.n_docs,
            dict(self.top_k),
        )

    def frequency(self, site: str) -> torch.Tensor:
        return self.counts[site].double() / self.n_docs

    def mean_importance(self, site: str) -> torch.Tensor:
        return self.importance_sum[site] / self.n_docs

    def activated(self, site: str, rho: float) -> torch.Tensor:
        """Neurons activated in at least a fraction ``rho`` of the documents."""
        if not 0 < rho <= 1:
            raise SelectionError(f"rho is {rho!r}: it must be a fraction in (0, 1] (the paper uses 1.0)")
        needed = math.ceil(rho * self.n_docs - 1e-9)
        return self.counts[site] >= needed

    def save(self, path, metadata: Mapping[str, object] | None = None) -> None:
        tensors = {f"counts/{s}": t.contiguous() for s, t in self.counts.items()}
        tensors |= {f"importance_sum/{s}": t.contiguous() for s, t in self.importance_sum.items()}
        header = {"n_docs": str(self.n_docs), "top_k": json.dumps(self.top_k)}
        header["provenance"] = json.dumps(dict(metadata or {}), sort_keys=True, default=str)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)

    @classmethod
    def load(cls, path) -> ActivationCounts:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        if "n_docs" not in header:
            raise SelectionError(f"{path} is not a langneurons activation-count file (no n_docs in its header)")
        tensors = load_file(str(path))
        counts = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("counts/")}
        importance = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("importance_sum/")}
        return cls(counts, importance, int(header["n_docs"]), json.loads(header["top_k"]))


def merge_counts(shards: Iterable[ActivationCounts]) -> ActivationCounts:
    """Sum the counts of several shards of one language's documents."""
    shards = list(shards)
    if not shards:
        raise SelectionError("no activation-count shards to merge")
    total = ActivationCounts.empty_like(shards[0])
    for shard in shards:
        total = total + shard
    return total


def neuron_sets(
    per_language: Mapping[str, ActivationCounts],
    rho: float,
    kinds: Iterable[str] = SET_KINDS,
) -> pd.DataFrame:
    """Tidy table of every language's neuron sets.

    - ``activated``: activated in at least a fraction rho of the language's documents;
    - ``specific``: activated minus the neurons activated in *every* language (the
      released code's rule);
    - ``exclusive``: activated minus the neurons activated in *any other* language.
    """
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in SET_KINDS]
    if unknown:
        raise SelectionError(f"set kind(s) {unknown} unknown; use {', '.join(SET_KINDS)}")
    if len(per_language) < 2 and set(kinds) - {"activated"}:
        raise SelectionError(
            f"specific/exclusive sets need at least two languages, got {sorted(per_language)}; add languages"
        )
    languages = sorted(per_language)
    sites = [s for s in SITES if s in per_language[languages[0]].counts]
    frames = []
    for site in sites:
        activated = torch.stack([per_language[lang].activated(site, rho) for lang in languages])
        shared_by_all = activated.all(dim=0)
        how_many = activated.sum(dim=0)
        for i, lang in enumerate(languages):
            masks = {
                "activated": activated[i],
                "specific": activated[i] & ~shared_by_all,
                "exclusive": activated[i] & (how_many == 1),
            }
            counts = per_language[lang]
            for kind in kinds:
                layer, index = masks[kind].nonzero(as_tuple=True)
                frames.append(
                    pd.DataFrame(
                        {
                            "language": lang,
                            "set_kind": kind,
                            "layer": layer.numpy().astype("int32"),
                            "site": site,
                            "index": index.numpy().astype("int32"),
                            "frequency": counts.frequency(site)[layer, index].numpy(),
                            "mean_importance": counts.mean_importance(site)[layer, index].numpy(),
                        }
                    )
                )
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=NEURON_COLUMNS)
    return table.sort_values(["language", "set_kind", "layer", "site", "index"], ignore_index=True)


def set_summary(
    table: pd.DataFrame, languages: Sequence[str], site_sizes: Mapping[str, int], n_layers: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Counts per language x set kind x layer x site, and pairwise Jaccard overlaps.

    The counts table carries ``percent_of_all``: the share of all neurons of the
    model (every layer, every scored site) that the set holds; the paper reports
    about 0.13% for its specific sets.
    """
    total = n_layers * sum(site_sizes.values())
    grid = pd.MultiIndex.from_product(
        [languages, sorted(table["set_kind"].unique()), range(n_layers), list(site_sizes)],
        names=["language", "set_kind", "layer", "site"],
    )
    counts = (
        table.groupby(["language", "set_kind", "layer", "site"]).size().reindex(grid, fill_value=0).rename("n_neurons")
    ).reset_index()
    counts["site_size"] = counts["site"].map(site_sizes)
    counts["percent_of_all"] = 100.0 * counts["n_neurons"] / total
    overlaps = []
    keyed = table.assign(key=list(zip(table["layer"], table["site"], table["index"])))
    for kind, rows in keyed.groupby("set_kind"):
        sets = {lang: set(rows.loc[rows["language"] == lang, "key"]) for lang in languages}
        for a in languages:
            for b in languages:
                union = len(sets[a] | sets[b])
                jaccard = len(sets[a] & sets[b]) / union if union else float("nan")
                overlaps.append({"set_kind": kind, "language_a": a, "language_b": b, "jaccard": jaccard})
    return counts, pd.DataFrame(overlaps, columns=["set_kind", "language_a", "language_b", "jaccard"])
