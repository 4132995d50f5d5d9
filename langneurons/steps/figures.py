"""Workflow steps: one function per figure, from the tables the other steps write.

Each step reads its tables, works out what the figure needs from them (the layer
count, the MWork stage sizes N1/N2 from the configured ``stages``) and writes the
figure as PNG and SVG with :mod:`langneurons.plotting`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from langneurons.conditions import layer_stages
from langneurons.io import read_parquet
from langneurons.plotting import (
    PlotInputError,
    plot_ablation_grid,
    plot_finetune_gains,
    plot_language_ratio,
    plot_neuron_counts,
    plot_overlap,
    plot_selectivity_frontier,
    plot_stability,
    save_figure,
)


def stage_sizes(n_layers: int, stages: Mapping[str, int | None]) -> tuple[int, int]:
    """(N1, N2): how many layers the understanding and the generation stage have."""
    labels = layer_stages(n_layers, stages.get("understanding"), stages.get("generation"))
    return labels.count("understanding"), labels.count("generation")


def _check_outputs(png_path: str, svg_path: str) -> None:
    png, svg = Path(png_path), Path(svg_path)
    if png.suffix != ".png" or svg.suffix != ".svg" or png.with_suffix("") != svg.with_suffix(""):
        raise ValueError(f"figure outputs must be <name>.png and <name>.svg side by side; got {png} and {svg}")


def language_ratio_step(
    ratio_paths: Sequence[str],
    stages: Mapping[str, int | None],
    png_path: str,
    svg_path: str,
    languages: Sequence[str] | None = None,
    title: str | None = None,
) -> tuple[Path, Path]:
    """Figure 1: language ratio per layer, one panel per document language, stage boundaries marked.

    The layer count is the model's (every layer has a row in the ratio tables).
    """
    _check_outputs(png_path, svg_path)
    ratios = pd.concat([read_parquet(path) for path in ratio_paths], ignore_index=True)
    if "condition" in ratios and ratios["condition"].nunique() > 1:
        raise PlotInputError(f"language ratio: one condition per figure; got {sorted(ratios['condition'].unique())}")
    n_layers = int(ratios["layer"].max()) + 1
    n1, n2 = stage_sizes(n_layers, stages)
    return plot_language_ratio(ratios, png_path, n1, n2, languages=languages, title=title)


def _n_layers(neurons: pd.DataFrame, summary_path: str | None) -> int:
    """The model's layer count: from the set summary (it has a row for every layer), else the neurons seen."""
    if summary_path is not None:
        summary = read_parquet(summary_path, columns=["layer"])
        if not summary.empty:
            return int(summary["layer"].max()) + 1
    if neurons.empty:
        raise PlotInputError("neuron counts: the neuron table is empty and there is no summary to count layers from")
    return int(neurons["layer"].max()) + 1


def neuron_counts_step(
    neurons_path: str,
    summary_path: str | None,
    set_kind: str,
    by: str,
    stages: Mapping[str, int | None],
    png_path: str,
    svg_path: str,
) -> tuple[Path, Path]:
    """Figure 2: neurons per layer in each language's ``set_kind`` set, one panel per site (or structure).

    When no language has a ``set_kind`` neuron (e.g. consensus rho too strict for the documents),
    the figure says so instead of failing the run.
    """
    _check_outputs(png_path, svg_path)
    neurons = read_parquet(neurons_path)
    if not (neurons["set_kind"] == set_kind).any():
        return save_figure(empty_figure(f"No language has a {set_kind} neuron in this run.", set_kind), png_path)
    n_layers = _n_layers(neurons, summary_path)
    n1, n2 = stage_sizes(n_layers, stages)
    return plot_neuron_counts(neurons, png_path, set_kind=set_kind, by=by, n_layers=n_layers, n1=n1, n2=n2)


def empty_figure(message: str, set_kind: str) -> Figure:
    """A figure that states why there is nothing to draw."""
    fig = Figure(figsize=(6.0, 2.0), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    hint = "Lower selection.rho or use more detection documents to find some."
    ax.text(0.5, 0.5, f"{message}\n{hint}", ha="center", va="center", fontsize=10, wrap=True)
    fig.suptitle(f"Language-{set_kind} neurons per layer", fontsize=11)
    return fig


def overlap_step(neurons_path: str, set_kind: str, png_path: str, svg_path: str) -> tuple[Path, Path]:
    """Figure 3: Jaccard overlap of the languages' ``set_kind`` sets."""
    _check_outputs(png_path, svg_path)
    return plot_overlap(read_parquet(neurons_path), png_path, set_kind=set_kind)


def ablation_figure_step(grid_path: str, metric: str, png_path: str, svg_path: str) -> tuple[Path, Path]:
    """Figure 4: the ablation grid for one metric, as the ratio to the unablated model, random controls beside."""
    _check_outputs(png_path, svg_path)
    grid = read_parquet(grid_path)
    return plot_ablation_grid(grid, png_path, metric=metric)


def finetune_phases(results: pd.DataFrame) -> pd.DataFrame:
    """The fine-tuning grid as before/after rows: the "none" method's values are every method's "before"."""
    before = results[results["method"] == "none"]
    if before.empty:
        raise PlotInputError(
            "fine-tuning gains need the 'none' method (the model before fine-tuning): add it to finetune.methods"
        )
    after = results[results["method"] != "none"].assign(phase="after")
    return pd.concat([before.assign(phase="before", method=None), after], ignore_index=True)


def finetune_figure_step(results_path: str, metric: str, png_path: str, svg_path: str) -> tuple[Path, Path]:
    """Figure 5: per method and target, the gain on the target language and the mean gain on the others."""
    _check_outputs(png_path, svg_path)
    phases = finetune_phases(read_parquet(results_path))
    return plot_finetune_gains(phases, png_path, metric=metric)


def stability_figure_step(stability_path: str, set_kind: str, png_path: str, svg_path: str) -> tuple[Path, Path]:
    """Figure 6: Jaccard of the sets from disjoint halves and from subsamples of the detection documents."""
    _check_outputs(png_path, svg_path)
    table = read_parquet(stability_path)
    return plot_stability(table, png_path, title=f"Stability of the {set_kind} neuron sets (mean ± std over draws)")


def selectivity_figure_step(
    table_path: str, goal: Mapping[str, float], png_path: str, svg_path: str
) -> tuple[Path, Path]:
    """The selectivity frontier: ratio on the own language against the others', per rule, front and goal marked."""
    _check_outputs(png_path, svg_path)
    return plot_selectivity_frontier(read_parquet(table_path), png_path, goal=dict(goal))
