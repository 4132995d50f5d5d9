"""Set sizes per set kind and language, from a run's cached activation counts (no model, no rescoring).

For every set kind (the three fixed ones, shared_by_at_most-1..n, contrast and
entropy at the given parameters) and language: the number of neurons in the set
(all layers and sites) and its share of all scored neurons. Prints a wide table
(kinds x languages) and writes the tidy one as Parquet when --out is given.

    python bench/set_sizes.py results/demo/counts --rho 0.9
    python bench/set_sizes.py results/demo/counts --rho 1.0 --contrast 0.1 0.3 0.5 --entropy 0.3 0.5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from langneurons.io import write_parquet_atomic
from langneurons.selection import SET_KINDS, ActivationCounts, neuron_sets, set_kind_name


def set_kinds(n_languages: int, contrasts: list[float], entropies: list[float]) -> list[str]:
    """The fixed kinds, every m of shared_by_at_most, then contrast and entropy at the given parameters."""
    return [
        *SET_KINDS,
        *(set_kind_name("shared_by_at_most", m) for m in range(1, n_languages + 1)),
        *(set_kind_name("contrast", delta) for delta in contrasts),
        *(set_kind_name("entropy", tau) for tau in entropies),
    ]


def set_sizes(per_language: dict[str, ActivationCounts], rho: float, kinds: list[str]) -> pd.DataFrame:
    """Tidy ``set_kind, language, n_neurons, percent_of_all`` for every kind and language (zeros included)."""
    table = neuron_sets(per_language, rho, kinds)
    first = next(iter(per_language.values()))
    total = sum(t.numel() for t in first.counts.values())
    grid = pd.MultiIndex.from_product([kinds, sorted(per_language)], names=["set_kind", "language"])
    sizes = table.groupby(["set_kind", "language"]).size().reindex(grid, fill_value=0).rename("n_neurons")
    sizes = sizes.reset_index()
    sizes["percent_of_all"] = 100.0 * sizes["n_neurons"] / total
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("counts", type=Path, help="folder of <language>.safetensors activation counts")
    parser.add_argument("--rho", type=float, default=0.9)
    parser.add_argument("--contrast", type=float, nargs="*", default=[0.1, 0.3, 0.5])
    parser.add_argument("--entropy", type=float, nargs="*", default=[0.3, 0.5])
    parser.add_argument("--out", type=Path, default=None, help="write the tidy table here (Parquet)")
    args = parser.parse_args()

    per_language = {path.stem: ActivationCounts.load(path) for path in sorted(args.counts.glob("*.safetensors"))}
    kinds = set_kinds(len(per_language), args.contrast, args.entropy)
    sizes = set_sizes(per_language, args.rho, kinds)
    first = next(iter(per_language.values()))
    total = sum(t.numel() for t in first.counts.values())
    print(
        f"rho={args.rho}, top_k={first.top_k}, documents per language "
        f"{ {lang: c.n_docs for lang, c in per_language.items()} }, {total} neurons scored"
    )
    wide = sizes.pivot(index="set_kind", columns="language", values="n_neurons").reindex(kinds)
    print(wide.to_string())
    if args.out is not None:
        write_parquet_atomic(sizes, args.out)


if __name__ == "__main__":
    main()
