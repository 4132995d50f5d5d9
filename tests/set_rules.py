"""A plain-Python reference for the set kinds, from per-neuron document counts (no torch, no langneurons).

Frequencies are exact fractions; a neuron is a hashable key (e.g. ``(layer, site, index)``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from fractions import Fraction


def reference_sets(
    counts: Mapping[str, Mapping[Hashable, int]], n_docs: Mapping[str, int], rho: float, kind: str
) -> dict[str, set]:
    """``{language: set of keys}`` for one set kind, by looping over neurons and languages.

    ``counts[lang][key]``: documents of ``lang`` with the neuron in their top-k
    (missing keys count 0).
    """
    languages = sorted(counts)
    keys = set().union(*(counts[lang].keys() for lang in languages))
    frequency = {lang: {key: Fraction(counts[lang].get(key, 0), n_docs[lang]) for key in keys} for lang in languages}
    needed = Fraction(str(rho))
    activated = {lang: {key for key in keys if frequency[lang][key] >= needed} for lang in languages}
    name, _, parameter = kind.partition("-")
    sets = {}
    for lang in languages:
        others = [other for other in languages if other != lang]
        chosen = set()
        for key in activated[lang]:
            n_others_activated = sum(key in activated[other] for other in others)
            if name == "activated":
                keep = True
            elif name == "specific":
                keep = n_others_activated < len(others)
            elif name == "exclusive":
                keep = n_others_activated == 0
            elif name == "shared_by_at_most":
                keep = 1 + n_others_activated <= int(parameter)
            elif name == "contrast":
                highest_other = max(frequency[other][key] for other in others)
                keep = frequency[lang][key] - highest_other >= Fraction(parameter)
            elif name == "entropy":
                keep = (
                    _normalised_entropy([float(frequency[other][key]) for other in languages])
                    <= float(parameter) + 1e-9
                )
            else:
                raise ValueError(kind)
            if keep:
                chosen.add(key)
        sets[lang] = chosen
    return sets


def _normalised_entropy(frequencies: list[float]) -> float:
    total = sum(frequencies)
    shares = [f / total for f in frequencies]
    return -sum(p * math.log(p) for p in shares if p > 0) / math.log(len(frequencies))
