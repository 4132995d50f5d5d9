"""From PLND scores to activation frequencies and language-specific neuron sets.

A neuron is *activated* for a document when it is among that document's top-k
neurons of its (layer, site). Per language we keep, for every neuron, the
number of documents in which it was activated (and the sum of its importance),
so that shards can be summed and any consensus threshold rho applied later
without rescoring. Everything here is vectorised over neurons.

Set kinds (:func:`parse_set_kind`): ``activated``, ``specific``, ``exclusive``
and the parametrised rules ``shared_by_at_most-<m>``, ``contrast-<delta>`` and
``entropy-<tau>``, all computed from the per-language counts.

Also here (random controls and file formats are :class:`langneurons.neuronset.NeuronSet`'s):

- :func:`set_stability`: split-half and subsample Jaccard of the sets, from
  cached per-document scores;
- :func:`lape_neurons`: the LAPE detector (Tang et al. 2024) from per-language
  counts of active tokens (:func:`langneurons.scoring.score_batch` with
  ``"ffn_active"`` and ``"n_tokens"``), storable in :class:`ActivationCounts`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from langneurons.io import atomic_path, read_safetensors
from langneurons.neuronset import NEURON_COLUMNS, SITES, neuron_table, stable_seed

#: The set kinds without a parameter (the released code's rules); see :func:`parse_set_kind` for all kinds.
SET_KINDS: tuple[str, ...] = ("activated", "specific", "exclusive")
#: Set kinds that take one parameter, written ``<kind>-<parameter>`` (e.g. ``contrast-0.3``).
PARAMETRIC_SET_KINDS: tuple[str, ...] = ("shared_by_at_most", "contrast", "entropy")
#: Most decimals a fractional parameter may have (keeps names short and the contrast test exact in int64).
MAX_PARAMETER_DECIMALS = 6
_FRACTION_PATTERN = rf"(?:0|1|0\.[0-9]{{0,{MAX_PARAMETER_DECIMALS - 1}}}[1-9])"
#: A regular expression matching exactly the canonical set-kind names (for wildcard constraints and schemas).
SET_KIND_PATTERN: str = "|".join(
    [*SET_KINDS, "shared_by_at_most-[1-9][0-9]*", f"contrast-{_FRACTION_PATTERN}", f"entropy-{_FRACTION_PATTERN}"]
)
#: Normalised entropies within this of an ``entropy-<tau>`` threshold count as at or below it (float rounding).
ENTROPY_TOLERANCE = 1e-9
#: Per-document LAPE counts (``langneurons.scoring.COUNT_OUTPUTS``) that
#: :meth:`ActivationCounts.from_scores` sums instead of ranking.
LAPE_OUTPUTS: tuple[str, ...] = ("ffn_active", "n_tokens")
AGREEMENT_COLUMNS: tuple[str, ...] = ("language", "set_kind_a", "set_kind_b", "site", "n_a", "n_b", "n_both", "jaccard")


class SelectionError(ValueError):
    """Neuron selection got inconsistent or unusable inputs."""


@dataclass(frozen=True)
class SetRule:
    """A parsed set kind: the rule and its parameter (``None`` for the kinds without one).

    ``parameter`` is an ``int`` (m) for ``shared_by_at_most`` and an exact
    :class:`~fractions.Fraction` (delta, tau) for ``contrast`` and ``entropy``.
    """

    kind: str
    parameter: int | Fraction | None = None

    @property
    def name(self) -> str:
        """The canonical name: the ``set_kind`` column value, file-name part and wildcard value."""
        if self.parameter is None:
            return self.kind
        if isinstance(self.parameter, int):
            return f"{self.kind}-{self.parameter}"
        decimal = Decimal(self.parameter.numerator) / Decimal(self.parameter.denominator)
        return f"{self.kind}-{format(decimal.normalize(), 'f')}"


def _set_kind_error(name: object, problem: str) -> SelectionError:
    return SelectionError(
        f"set kind {name!r}: {problem}. Set kinds are {', '.join(SET_KINDS)}, shared_by_at_most-<m> "
        "(m = 1, 2, ...: activated in L and in at most m-1 other languages), contrast-<delta> and "
        "entropy-<tau> (delta, tau in [0, 1] with at most "
        f"{MAX_PARAMETER_DECIMALS} decimals, written without trailing zeros, e.g. contrast-0.3)"
    )


def parse_set_kind(name: str) -> SetRule:
    """Parse a set-kind name; only canonical names are accepted, so a name is its own file name and column value.

    ``activated``, ``specific``, ``exclusive``; ``shared_by_at_most-<m>`` with a
    whole m >= 1; ``contrast-<delta>`` and ``entropy-<tau>`` with a decimal in
    [0, 1] of at most :data:`MAX_PARAMETER_DECIMALS` decimals. A name that
    means a valid rule but is spelled otherwise (``contrast-0.30``,
    ``shared_by_at_most-02``) is refused with the canonical spelling.
    """
    if not isinstance(name, str):
        raise _set_kind_error(name, f"a set kind is a string, not a {type(name).__name__}")
    if name in SET_KINDS:
        return SetRule(name)
    kind, dash, text = name.partition("-")
    if kind in SET_KINDS:
        raise _set_kind_error(name, f"{kind} takes no parameter; write {kind!r}")
    if kind not in PARAMETRIC_SET_KINDS:
        raise _set_kind_error(name, f"unknown kind {kind!r}")
    if not dash or not text:
        raise _set_kind_error(name, f"{kind} needs a parameter, written {kind}-<parameter>")
    if kind == "shared_by_at_most":
        if not text.isascii() or not text.isdigit() or int(text) < 1:
            raise _set_kind_error(name, f"m={text!r} must be a whole number >= 1")
        rule = SetRule(kind, int(text))
    else:
        value = Decimal(text) if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text) else None
        if value is None or not 0 <= value <= 1:
            raise _set_kind_error(name, f"the parameter {text!r} must be a decimal number in [0, 1]")
        if -value.normalize().as_tuple().exponent > MAX_PARAMETER_DECIMALS:
            raise _set_kind_error(name, f"the parameter {text!r} has more than {MAX_PARAMETER_DECIMALS} decimals")
        rule = SetRule(kind, Fraction(value))
    if rule.name != name:
        raise _set_kind_error(name, f"write it as {rule.name!r} (the canonical spelling)")
    return rule


def set_kind_name(kind: str, parameter: int | float | str | None = None) -> str:
    """The canonical name of a set kind and its parameter, e.g. ``set_kind_name("contrast", 0.3) == "contrast-0.3"``."""
    if parameter is None or kind == "shared_by_at_most":
        return parse_set_kind(kind if parameter is None else f"{kind}-{parameter}").name
    try:
        # repr: the shortest decimal that reads back as the float (0.3, not 0.299999...)
        text = format(Decimal(repr(parameter) if isinstance(parameter, float) else parameter).normalize(), "f")
    except (InvalidOperation, TypeError, ValueError):
        raise _set_kind_error(f"{kind}-{parameter}", f"the parameter {parameter!r} is not a number") from None
    return parse_set_kind(f"{kind}-{text}").name


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
    Optionally, for LAPE, ``active_tokens["ffn"]`` (int64 ``[layers,
    intermediate]``) counts the tokens on which each FFN unit's activation was
    > 0, over ``n_tokens`` tokens in all; both are ``None`` when the scores
    had no LAPE counts. They save, load and merge with the rest.
    """

    counts: dict[str, torch.Tensor]
    importance_sum: dict[str, torch.Tensor]
    n_docs: int
    top_k: dict[str, int]
    active_tokens: dict[str, torch.Tensor] | None = None
    n_tokens: int | None = None

    @classmethod
    def from_scores(cls, scores: Mapping[str, torch.Tensor], top_k: Mapping[str, float]) -> ActivationCounts:
        """Counts from per-document scores ``{site: [docs, layers, neurons]}``.

        LAPE counts in ``scores`` (``ffn_active`` ``[docs, layers, inter]`` and
        ``n_tokens`` ``[docs]``, see :data:`LAPE_OUTPUTS`) are summed over the
        documents into ``active_tokens`` / ``n_tokens``; they need no top-k.
        """
        counts, importance, resolved = {}, {}, {}
        for site, tensor in scores.items():
            if site in LAPE_OUTPUTS:
                continue
            resolved[site] = resolve_top_k(top_k[site], tensor.shape[-1], site)
            counts[site] = top_k_mask(tensor, resolved[site]).sum(dim=0, dtype=torch.int64)
            importance[site] = tensor.double().sum(dim=0)
        if ("ffn_active" in scores) != ("n_tokens" in scores):
            raise SelectionError(
                "LAPE counts need both 'ffn_active' and 'n_tokens' in the scores; score with "
                "sites=(..., 'ffn_active', 'n_tokens')"
            )
        active, n_tokens = None, None
        if "ffn_active" in scores:
            active = {"ffn": scores["ffn_active"].double().sum(dim=0).round().to(torch.int64)}
            n_tokens = int(scores["n_tokens"].sum())
        n_docs = next(iter(scores.values())).shape[0]
        return cls(counts, importance, n_docs, resolved, active, n_tokens)

    @classmethod
    def empty_like(cls, other: ActivationCounts) -> ActivationCounts:
        active = None
        if other.active_tokens is not None:
            active = {s: torch.zeros_like(t) for s, t in other.active_tokens.items()}
        return cls(
            {s: torch.zeros_like(t) for s, t in other.counts.items()},
            {s: torch.zeros_like(t) for s, t in other.importance_sum.items()},
            0,
            dict(other.top_k),
            active,
            None if other.n_tokens is None else 0,
        )

    def __add__(self, other: ActivationCounts) -> ActivationCounts:
        if self.top_k != other.top_k or set(self.counts) != set(other.counts):
            raise SelectionError(
                f"cannot add activation counts made with different sites/top-k: {self.top_k} vs {other.top_k}"
            )
        if (self.active_tokens is None) != (other.active_tokens is None):
            raise SelectionError(
                "cannot add activation counts with and without LAPE active-token counts; rescore the shards "
                "without them with sites=(..., 'ffn_active', 'n_tokens')"
            )
        active, n_tokens = None, None
        if self.active_tokens is not None:
            active = {s: self.active_tokens[s] + other.active_tokens[s] for s in self.active_tokens}
            n_tokens = self.n_tokens + other.n_tokens
        return ActivationCounts(
            {s: self.counts[s] + other.counts[s] for s in self.counts},
            {s: self.importance_sum[s] + other.importance_sum[s] for s in self.counts},
            self.n_docs + other.n_docs,
            dict(self.top_k),
            active,
            n_tokens,
        )

    def activation_probability(self) -> torch.Tensor:
        """LAPE's p(language, unit): active tokens / tokens, float64 ``[layers, intermediate]``."""
        if self.active_tokens is None or not self.n_tokens:
            raise SelectionError(
                "these activation counts hold no LAPE active-token counts; score with "
                "sites=(..., 'ffn_active', 'n_tokens') and count again"
            )
        return self.active_tokens["ffn"].double() / self.n_tokens

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
        if self.active_tokens is not None:
            tensors |= {f"active_tokens/{s}": t.contiguous() for s, t in self.active_tokens.items()}
            header["n_tokens"] = str(self.n_tokens)
        header["provenance"] = json.dumps(dict(metadata or {}), sort_keys=True, default=str)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)

    @classmethod
    def load(cls, path) -> ActivationCounts:
        tensors, header = read_safetensors(path)
        if "n_docs" not in header:
            raise SelectionError(f"{path} is not a langneurons activation-count file (no n_docs in its header)")
        counts = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("counts/")}
        importance = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("importance_sum/")}
        active = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("active_tokens/")}
        n_tokens = int(header["n_tokens"]) if "n_tokens" in header else None
        if bool(active) != (n_tokens is not None):
            raise SelectionError(f"{path}: LAPE active-token counts and n_tokens must be stored together")
        return cls(
            counts, importance, int(header["n_docs"]), json.loads(header["top_k"]), active or None, n_tokens
        )


def merge_counts(shards: Iterable[ActivationCounts]) -> ActivationCounts:
    """Sum the counts of several shards of one language's documents."""
    shards = list(shards)
    if not shards:
        raise SelectionError("no activation-count shards to merge")
    total = ActivationCounts.empty_like(shards[0])
    for shard in shards:
        total = total + shard
    return total


def _sites_of(per_language: Mapping[str, ActivationCounts]) -> list[str]:
    return [s for s in SITES if s in next(iter(per_language.values())).counts]


def _check_rules(kinds: Iterable[str], languages: Sequence[str]) -> list[SetRule]:
    """Parse the set kinds and check that each can be built from ``languages``."""
    rules = [parse_set_kind(kind) for kind in kinds]
    comparing = [rule.name for rule in rules if rule.kind != "activated"]
    if len(languages) < 2 and comparing:
        raise SelectionError(
            f"set kinds {comparing} compare languages: they need at least two languages, got {sorted(languages)}; "
            "add languages or build only activated sets"
        )
    too_wide = [rule.name for rule in rules if rule.kind == "shared_by_at_most" and rule.parameter > len(languages)]
    if too_wide:
        raise SelectionError(
            f"set kinds {too_wide}: m counts languages, and there are only {len(languages)} "
            f"({', '.join(sorted(languages))}); use shared_by_at_most-1 .. shared_by_at_most-{len(languages)} "
            f"(shared_by_at_most-{len(languages)} is activated)"
        )
    return rules


def _beats_every_other_by(counts: torch.Tensor, n_docs: Sequence[int], delta: Fraction) -> torch.Tensor:
    """``[languages, ...]`` bool: frequency in L minus every other language's frequency >= delta, exactly.

    Frequencies are c / n; ``c_L / n_L - c_O / n_O >= p / q`` is tested as the
    integer inequality ``q (c_L n_O - c_O n_L) >= p n_L n_O``, so a difference
    that equals delta is never lost to float rounding (0.7 - 0.4 < 0.3 in floats).
    """
    p, q = delta.numerator, delta.denominator
    if q * max(n_docs) ** 2 >= 2**62:
        raise SelectionError(
            f"contrast: {max(n_docs)} documents per language with a {q}-th part threshold overflow the exact "
            "integer test; use fewer documents or a delta with fewer decimals"
        )
    result = []
    for i, n_own in enumerate(n_docs):
        keep = torch.ones_like(counts[i], dtype=torch.bool)
        for j, n_other in enumerate(n_docs):
            if j != i:
                keep &= q * (counts[i] * n_other - counts[j] * n_own) >= p * n_own * n_other
        result.append(keep)
    return torch.stack(result)


def _normalised_entropy(frequencies: torch.Tensor) -> torch.Tensor:
    """Entropy (natural log, 0 log 0 = 0) of each neuron's frequencies normalised over languages, divided by log n.

    0: only one language ever has the neuron in its top-k; 1: every language
    equally often. A neuron no language activates gets 1 (it is nobody's).
    """
    total = frequencies.sum(dim=0, keepdim=True)
    shares = frequencies / total.clamp_min(torch.finfo(frequencies.dtype).tiny)
    logs = torch.where(shares > 0, shares.log(), torch.zeros_like(shares))
    entropy = -(shares * logs).sum(dim=0) / math.log(frequencies.shape[0])
    return torch.where(total[0] > 0, entropy, torch.ones_like(entropy))


def _set_masks(
    per_language: Mapping[str, ActivationCounts], rho: float, kinds: Iterable[str] = SET_KINDS
) -> dict[tuple[str, str, str], torch.Tensor]:
    """``{(language, kind, site): bool [layers, neurons]}`` for the given set kinds.

    Every set is a subset of ``activated(L)``; the kinds differ in what they
    ask of the other languages (see :func:`neuron_sets`).
    """
    languages = sorted(per_language)
    rules = _check_rules(kinds, languages)
    n_docs = [per_language[lang].n_docs for lang in languages]
    masks = {}
    for site in _sites_of(per_language):
        activated = torch.stack([per_language[lang].activated(site, rho) for lang in languages])
        how_many = activated.sum(dim=0)
        counts = torch.stack([per_language[lang].counts[site] for lang in languages])
        frequencies = torch.stack([per_language[lang].frequency(site) for lang in languages])
        for rule in rules:
            if rule.kind == "activated":
                chosen = activated
            elif rule.kind == "specific":
                chosen = activated & (how_many < len(languages))
            elif rule.kind == "exclusive":
                chosen = activated & (how_many == 1)
            elif rule.kind == "shared_by_at_most":
                chosen = activated & (how_many <= rule.parameter)
            elif rule.kind == "contrast":
                chosen = activated & _beats_every_other_by(counts, n_docs, rule.parameter)
            else:
                low = _normalised_entropy(frequencies) <= float(rule.parameter) + ENTROPY_TOLERANCE
                chosen = activated & low
            for i, lang in enumerate(languages):
                masks[lang, rule.name, site] = chosen[i]
    return masks


def neuron_sets(
    per_language: Mapping[str, ActivationCounts],
    rho: float,
    kinds: Iterable[str] = SET_KINDS,
) -> pd.DataFrame:
    """Tidy table of every language's neuron sets, one ``set_kind`` per name in ``kinds``.

    Every set is part of ``activated(L)``, the neurons in L's per-document
    top-k in at least a fraction rho of L's documents; with f(L) the fraction
    of L's documents that have the neuron in their top-k:

    - ``activated``: all of activated(L);
    - ``specific``: minus the neurons activated in *every* language (the
      released code's rule; with many languages it keeps neurons most share);
    - ``exclusive``: minus the neurons activated in *any other* language;
    - ``shared_by_at_most-<m>``: activated for L and for at most m - 1 other
      languages (m = 1 is exclusive, m = number of languages is activated);
    - ``contrast-<delta>``: f(L) minus the highest f of the other languages
      is at least delta (exactly, in rationals). rho still applies; with a
      small rho this is the contrast of frequencies alone;
    - ``entropy-<tau>``: the entropy of the neuron's frequencies normalised
      over the languages, divided by log(number of languages), is at most tau
      (0: no other language ever has it in its top-k; 1: all equally often).
    """
    kinds = list(dict.fromkeys(kinds))
    languages = sorted(per_language)
    masks = _set_masks(per_language, rho, kinds)
    frames = []
    for site in _sites_of(per_language):
        for lang in languages:
            counts = per_language[lang]
            for kind in kinds:
                layer, index = masks[lang, kind, site].nonzero(as_tuple=True)
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


def _jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|; NaN for two empty sets."""
    union = len(a | b)
    return len(a & b) / union if union else float("nan")


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
                jaccard = _jaccard(sets[a], sets[b])
                overlaps.append({"set_kind": kind, "language_a": a, "language_b": b, "jaccard": jaccard})
    return counts, pd.DataFrame(overlaps, columns=["set_kind", "language_a", "language_b", "jaccard"])


def language_set(table: pd.DataFrame, language: str, set_kind: str) -> pd.DataFrame:
    """The rows of ``language``'s ``set_kind`` set in a neuron table (possibly none), reindexed from 0."""
    return table[(table["language"] == language) & (table["set_kind"] == set_kind)].reset_index(drop=True)


def detector_agreement(table: pd.DataFrame, kind_a: str, kind_b: str, site: str = "ffn") -> pd.DataFrame:
    """Per language, how much two set kinds (e.g. PLND ``specific`` and ``lape``) agree on one site.

    Returns ``language, set_kind_a, set_kind_b, site, n_a, n_b, n_both, jaccard``;
    the Jaccard of two empty sets is NaN. LAPE finds FFN units only, so the
    two detectors are compared on ``site="ffn"``.
    """
    rows = []
    on_site = table[table["site"] == site]
    keys = on_site.assign(key=list(zip(on_site["layer"], on_site["index"])))
    for lang in sorted(table["language"].unique()):
        mine = keys[keys["language"] == lang]
        a = set(mine.loc[mine["set_kind"] == kind_a, "key"])
        b = set(mine.loc[mine["set_kind"] == kind_b, "key"])
        rows.append(
            {
                "language": lang,
                "set_kind_a": kind_a,
                "set_kind_b": kind_b,
                "site": site,
                "n_a": len(a),
                "n_b": len(b),
                "n_both": len(a & b),
                "jaccard": _jaccard(a, b),
            }
        )
    return pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))


# --------------------------------------------------------------------------- stability


def stability_draws(
    n_docs: Mapping[str, int],
    n_docs_grid: Sequence[int | str] = (50, 100, 200, 400, "all"),
    seed: int = 0,
    replicates: int = 5,
) -> list[dict]:
    """The document subsets :func:`set_stability` compares, reproducibly.

    Returns records ``{"kind", "replicate", "n_docs": {lang: n}, "a": {lang:
    LongTensor}, "b": {lang: LongTensor or None}}``; ``b`` is ``None`` for
    "the language's documents". ``halves``: per replicate, a random
    permutation of each language's documents split into two disjoint halves of
    ``n // 2``. ``subsample``: per grid size n and replicate, n documents of
    every language drawn without replacement; sizes above the smallest
    language's count are skipped, and ``"all"`` (one replicate) compares
    all documents with themselves. Every draw has its own numpy Generator
    seeded from (seed, kind, replicate, n, language).
    """
    if replicates < 1:
        raise SelectionError(f"replicates={replicates}: give at least 1")
    smallest = min(n_docs.values())
    if smallest < 2:
        raise SelectionError(f"every language needs at least 2 documents to split in halves; got {dict(n_docs)}")

    def permutation(lang: str, *key: object) -> torch.Tensor:
        rng = np.random.default_rng([seed, stable_seed(lang, *key)])
        return torch.from_numpy(rng.permutation(n_docs[lang])).long()

    draws = []
    for replicate in range(replicates):
        a, b = {}, {}
        for lang, total in n_docs.items():
            order = permutation(lang, "halves", replicate)
            a[lang], b[lang] = order[: total // 2], order[total // 2 : 2 * (total // 2)]
        sizes = {lang: total // 2 for lang, total in n_docs.items()}
        draws.append({"kind": "halves", "replicate": replicate, "n_docs": sizes, "a": a, "b": b})
    for n in n_docs_grid:
        if n == "all":
            everything = {lang: torch.arange(total) for lang, total in n_docs.items()}
            draws.append(
                {
                    "kind": "subsample",
                    "replicate": 0,
                    "n_docs": dict(n_docs),
                    "a": everything,
                    "b": dict.fromkeys(n_docs),
                }
            )
            continue
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise SelectionError(f"n_docs_grid holds {n!r}: give document counts >= 1 or 'all'")
        if n > smallest:
            continue
        for replicate in range(replicates):
            a = {lang: permutation(lang, "subsample", replicate, int(n))[: int(n)] for lang in n_docs}
            draws.append(
                {
                    "kind": "subsample",
                    "replicate": replicate,
                    "n_docs": dict.fromkeys(n_docs, int(n)),
                    "a": a,
                    "b": dict.fromkeys(n_docs),
                }
            )
    return draws


def _count_dtype(n_docs: int) -> torch.dtype:
    """The narrowest integer dtype that holds a count of up to ``n_docs`` documents."""
    return torch.int16 if n_docs <= torch.iinfo(torch.int16).max else torch.int32


def set_stability(
    scores_by_language: Mapping[str, Mapping[str, torch.Tensor]],
    top_k: Mapping[str, float],
    rho: float,
    set_kind: str = "specific",
    n_docs_grid: Sequence[int | str] = (50, 100, 200, 400, "all"),
    seed: int = 0,
    replicates: int = 5,
    n_docs: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """How stable are the neuron sets under a change of detection documents?

    From cached per-document PLND scores ``{lang: {site: [docs, layers,
    neurons]}}`` (no rescoring), for each draw of :func:`stability_draws`:

    - ``halves``: the Jaccard of ``set_kind``(L) found on one half of every
      language's documents vs the other half (disjoint);
    - ``subsample``: the Jaccard of the set found on n documents of every
      language vs the set found on all documents.

    Sets use every language at once (specific/exclusive depend on the other
    languages), all sites together (a neuron is a (layer, site, index)), and
    the same top-k and rho. The Jaccard of two empty sets is NaN. Returns
    columns ``language, n_docs, replicate, jaccard, kind``; ``n_docs`` is the
    number of documents per language of each compared set (the half size for
    ``halves``).

    Memory: each language's sites are read once, one at a time
    (``scores_by_language[lang][site]``), and only every draw's per-neuron
    activation counts are kept. With a mapping that reads a site on access
    (:class:`langneurons.scorefiles.ScoreShards`), and ``n_docs`` (documents
    per language) given so that no site is read for its shape, the peak is one
    site of one language plus the counts, whatever the number of languages.
    """
    languages = sorted(scores_by_language)
    _check_rules([set_kind], languages)
    sites = [s for s in SITES if s in scores_by_language[languages[0]]]
    for lang in languages:
        if [s for s in SITES if s in scores_by_language[lang]] != sites:
            raise SelectionError(f"language {lang!r} was scored on other sites than {languages[0]!r}: {sites}")
    if n_docs is None:
        n_docs = {lang: scores_by_language[lang][sites[0]].shape[0] for lang in languages}
    draws = stability_draws(n_docs, n_docs_grid, seed, replicates)
    # every document subset a draw compares: all of a language's documents, or the rows of a draw's side
    subsets = [("all", None)] + [((i, side), draw[side]) for i, draw in enumerate(draws) for side in ("a", "b")]
    resolved: dict[str, int] = {}
    counts: dict[object, dict[str, dict[str, torch.Tensor]]] = {key: {} for key, _ in subsets}
    for lang in languages:
        for site in sites:
            scores = scores_by_language[lang][site]
            if scores.shape[0] != n_docs[lang]:
                raise SelectionError(f"{lang!r} has {scores.shape[0]} documents of {site!r}, not {n_docs[lang]}")
            if site not in resolved:
                resolved[site] = resolve_top_k(top_k[site], scores.shape[-1], site)
            mask = top_k_mask(scores, resolved[site])
            del scores
            for key, rows in subsets:
                if rows is not None and rows[lang] is None:
                    continue  # this side is all of the language's documents
                chosen = mask if rows is None else mask[rows[lang]]
                per_neuron = chosen.sum(dim=0, dtype=torch.int64).to(_count_dtype(n_docs[lang]))
                counts[key].setdefault(lang, {})[site] = per_neuron
            del mask

    def sets(key: object, rows: Mapping[str, torch.Tensor | None]) -> dict[str, dict[str, torch.Tensor]]:
        per_language = {}
        for lang in languages:
            used_key, used = (key, len(rows[lang])) if rows[lang] is not None else ("all", n_docs[lang])
            site_counts = {s: c.to(torch.int64) for s, c in counts[used_key][lang].items()}
            per_language[lang] = ActivationCounts(site_counts, {}, used, dict(resolved))
        found = _set_masks(per_language, rho, [set_kind])
        return {lang: {s: found[lang, set_kind, s] for s in sites} for lang in languages}

    full = None
    rows = []
    for i, draw in enumerate(draws):
        first = sets((i, "a"), draw["a"])
        if all(v is None for v in draw["b"].values()):
            full = full or sets("all", draw["b"])
            second = full
        else:
            second = sets((i, "b"), draw["b"])
        for lang in languages:
            both = sum(int((first[lang][s] & second[lang][s]).sum()) for s in sites)
            either = sum(int((first[lang][s] | second[lang][s]).sum()) for s in sites)
            rows.append(
                {
                    "language": lang,
                    "n_docs": draw["n_docs"][lang],
                    "replicate": draw["replicate"],
                    "jaccard": both / either if either else float("nan"),
                    "kind": draw["kind"],
                }
            )
    return pd.DataFrame(rows, columns=["language", "n_docs", "replicate", "jaccard", "kind"])


# --------------------------------------------------------------------------- LAPE


def lape_neurons(
    active_counts: Mapping[str, torch.Tensor],
    token_counts: Mapping[str, int],
    entropy_quantile: float = 0.01,
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
    set_kind: str = "lape",
) -> pd.DataFrame:
    """LAPE language-specific FFN neurons (Tang et al. 2024), from active-token counts.

    ``active_counts[L]``: ``[layers, intermediate]`` tokens of language L on
    which the unit's activation was > 0; ``token_counts[L]``: L's tokens. The
    rule follows the reference code (RUCAIBox/Language-Specific-Neurons,
    ``identify.py``), as we read it:

    1. p(L, u) = active tokens / tokens (the activation probability);
    2. normalise p over languages per unit (all-zero units get 0, not NaN)
       and take the entropy (natural log, 0 log 0 = 0);
    3. ``filter_rate``: the threshold ``t_f`` is the k-th smallest of *all*
       probabilities (every layer, unit and language) with ``k =
       round(count * filter_rate)``; a unit whose every p(L, u) is <= ``t_f``
       is dropped (the reference sets its entropy to +inf);
    4. ``entropy_quantile`` (the reference's ``top_rate``): keep the
       ``round(layers * intermediate * entropy_quantile)`` units of lowest
       entropy, a fraction of *all* units, not of the survivors of 3;
    5. ``activation_bar_ratio``: the threshold ``t_a`` is the k-th smallest
       probability as in 3; a kept unit belongs to every language L with
       p(L, u) > ``t_a`` (strictly; a unit can belong to several languages).

    Interpretations: ``round`` is Python's (half to even), k is at least 1.
    Entropy ties are broken by (layer, index) order (``torch.topk`` leaves
    them unspecified). Units dropped in step 3 are never selected, even when
    fewer than the step-4 count survive (the reference would then fill up
    with dropped units, which step 5 only leaves out when
    ``activation_bar_ratio >= filter_rate``, as with the defaults).

    Returns :data:`NEURON_COLUMNS` with ``site="ffn"``, ``frequency=p(L, u)``
    and ``mean_importance=NaN``.
    """
    for name, rate in (
        ("entropy_quantile", entropy_quantile),
        ("filter_rate", filter_rate),
        ("activation_bar_ratio", activation_bar_ratio),
    ):
        if not 0 < rate <= 1:
            raise SelectionError(f"{name}={rate!r}: it must be a fraction in (0, 1]")
    languages = sorted(active_counts)
    if len(languages) < 2:
        raise SelectionError(f"LAPE compares languages; got {languages}: give at least two")
    if set(token_counts) != set(languages):
        raise SelectionError(
            f"token_counts has languages {sorted(token_counts)}, active_counts has {languages}; they must match"
        )
    shape = active_counts[languages[0]].shape
    for lang in languages:
        counts, tokens = active_counts[lang], token_counts[lang]
        if counts.shape != shape or counts.dim() != 2:
            raise SelectionError(
                f"active counts of {lang!r} are {tuple(counts.shape)}; expected [layers, units] {tuple(shape)}"
            )
        if not tokens > 0:
            raise SelectionError(f"language {lang!r} has {tokens} tokens; LAPE needs scored tokens")
        if counts.min() < 0 or counts.max() > tokens:
            raise SelectionError(f"active counts of {lang!r} must lie in 0..{tokens} (its token count)")
    probs = torch.stack([active_counts[lang].double() / token_counts[lang] for lang in languages], dim=-1)
    normed = probs / probs.sum(dim=-1, keepdim=True)
    normed = torch.nan_to_num(normed, nan=0.0)
    logs = torch.where(normed > 0, normed.log(), torch.zeros_like(normed))
    entropy = -(normed * logs).sum(dim=-1)

    flat = probs.flatten()

    def kth(rate: float) -> float:
        k = min(max(1, round(flat.numel() * rate)), flat.numel())
        return float(flat.kthvalue(k).values)

    passes = (probs > kth(filter_rate)).any(dim=-1)
    n_select = round(entropy.numel() * entropy_quantile)
    ranked = torch.where(passes, entropy, torch.full_like(entropy, math.inf)).flatten()
    order = torch.sort(ranked, stable=True).indices[:n_select]
    order = order[torch.isfinite(ranked[order])]
    layer, unit = order // shape[1], order % shape[1]
    chosen = probs[layer, unit] > kth(activation_bar_ratio)  # [selected, languages]
    frames = []
    for i, lang in enumerate(languages):
        pick = chosen[:, i]
        frames.append(
            pd.DataFrame(
                {
                    "language": lang,
                    "set_kind": set_kind,
                    "layer": layer[pick].numpy().astype("int32"),
                    "site": "ffn",
                    "index": unit[pick].numpy().astype("int32"),
                    "frequency": probs[layer[pick], unit[pick], i].numpy(),
                    "mean_importance": float("nan"),
                }
            )
        )
    return neuron_table([f for f in frames if len(f)])


def lape_neurons_from_counts(per_language: Mapping[str, ActivationCounts], **options) -> pd.DataFrame:
    """:func:`lape_neurons` from stored :class:`ActivationCounts` that carry active-token counts."""
    missing = [lang for lang, c in per_language.items() if c.active_tokens is None]
    if missing:
        raise SelectionError(
            f"activation counts of {missing} hold no LAPE active-token counts; score with "
            "sites=(..., 'ffn_active', 'n_tokens') and count again"
        )
    return lape_neurons(
        {lang: c.active_tokens["ffn"] for lang, c in per_language.items()},
        {lang: c.n_tokens for lang, c in per_language.items()},
        **options,
    )
