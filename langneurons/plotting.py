"""The project's figures, from the tidy tables the workflow steps write.

Every figure is built by a pure ``*_figure(table, ...) -> Figure`` function
and written by a ``plot_*(table, path, ...)`` wrapper that saves a PNG and an
SVG atomically (:func:`save_figure`), so a killed step never leaves half a
figure that Snakemake would take for a finished one.

Figures are built on :class:`matplotlib.figure.Figure` directly, never
through ``pyplot``: no global state, no GUI backend, nothing to close, safe
in workers (rendering uses the Agg canvas). Readability rules followed
throughout: constrained layout (no overlapping text), labelled axes with
units, language codes as given, legends outside the data, and the
Okabe-Ito colour-blind-safe palette with a marker and line style per series
so that lines stay distinguishable in greyscale.

Input tables (tidy, one observation per row):

================== =====================================================================
figure             columns
================== =====================================================================
language ratio     language, layer, category (en/target/other), share  (logit_lens)
neuron counts      language, set_kind, layer, site, index [, frequency, mean_importance]
overlap            language, set_kind, layer, site, index [, detector]
ablation grid      condition, target_language, control (real/random), eval_language,
                   metric, value [, detector, set_kind, seed, n_neurons_deactivated];
                   baseline rows have condition == "none"
fine-tuning gains  method, target_language, eval_language, metric, value,
                   phase (before/after) [, seed]; "before" rows with an empty method
                   are the shared base model and apply to every method
stability          language, n_docs, jaccard [, replicate]
selectivity        method, top_k, set_kind, target_language, ratio_on_target,
                   mean_ratio_others  (selectivity/table.parquet)
================== =====================================================================

Bad input raises :class:`PlotInputError` naming the missing column or value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

from langneurons.io import atomic_path

__all__ = [
    "ABLATION_COLUMNS",
    "FINETUNE_COLUMNS",
    "OKABE_ITO",
    "PlotInputError",
    "ablation_changes",
    "ablation_grid_figure",
    "finetune_gains",
    "finetune_gains_figure",
    "jaccard_matrix",
    "language_ratio_figure",
    "neuron_counts_figure",
    "overlap_figure",
    "plot_ablation_grid",
    "plot_finetune_gains",
    "plot_language_ratio",
    "plot_neuron_counts",
    "plot_overlap",
    "pareto_front",
    "plot_selectivity_frontier",
    "plot_stability",
    "require_columns",
    "save_figure",
    "selectivity_frontier_figure",
    "selectivity_points",
    "stability_figure",
]

#: Okabe & Ito (2008) colour-blind-safe palette, yellow left out (too pale on white).
OKABE_ITO: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES: tuple[str, ...] = ("-", "--", "-.", ":")
#: Colour, line style and marker of the language-ratio categories.
CATEGORY_STYLE: dict[str, tuple[str, str, str]] = {
    "en": ("#0072B2", "-", "o"),
    "target": ("#D55E00", "--", "s"),
    "other": ("#7F7F7F", ":", "^"),
}
CATEGORY_LABEL = {"en": "English (en)", "target": "document language (panel title)", "other": "other / no language"}
STAGES: tuple[str, ...] = ("understanding", "task solving", "generation")
#: Metric names (substrings) for which lower is better; everything else counts as higher-is-better.
LOWER_IS_BETTER: tuple[str, ...] = ("ppl", "perplexity", "loss", "nll", "bits", "error")
NEURON_KEY: tuple[str, ...] = ("layer", "site", "index")
#: Face and text colour of a change whose 95% interval covers "no change": it must not look like an effect.
NO_EFFECT_COLOR = "#E8E8E8"
MUTED_TEXT = "#707070"


class PlotInputError(ValueError):
    """A plotting function got a table it cannot draw."""


# ---- shared helpers -----------------------------------------------------------------------------


def save_figure(fig: Figure, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``fig`` as ``<path>.png`` (150 dpi) and ``<path>.svg``, each atomically.

    ``path`` may name the PNG, the SVG or neither extension. SVGs carry no
    date and a fixed id salt, so reruns give identical files.
    """
    base = Path(path)
    if base.suffix.lower() in (".png", ".svg"):
        base = base.with_suffix("")
    png, svg = base.with_name(base.name + ".png"), base.with_name(base.name + ".svg")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    with mpl.rc_context({"svg.hashsalt": "langneurons"}), atomic_path(svg) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None})
    return png, svg


def require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise :class:`PlotInputError` naming the columns ``table`` lacks, or if it has no rows."""
    if not isinstance(table, pd.DataFrame):
        raise PlotInputError(f"{what}: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise PlotInputError(
            f"{what}: the table lacks column(s) {missing}; it has {list(table.columns)} and needs {list(columns)}"
        )
    if table.empty:
        raise PlotInputError(f"{what}: the table has no rows")


def _series_style(i: int) -> dict:
    """Colour, marker and line style of the i-th series (distinct beyond the palette's length)."""
    return {
        "color": OKABE_ITO[i % len(OKABE_ITO)],
        "marker": MARKERS[i % len(MARKERS)],
        "linestyle": LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)],
    }


def _grid(n_panels: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n_panels, max_cols)
    return math.ceil(n_panels / cols), cols


def _panel_axes(fig: Figure, n_panels: int, max_cols: int = 4, **kwargs) -> list[Axes]:
    rows, cols = _grid(n_panels, max_cols)
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs).flatten()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return list(axes[:n_panels])


def _label_grid(axes: list[Axes], xlabel: str, ylabel: str, max_cols: int = 4) -> None:
    """Axis labels on the outer panels of a shared-axes grid only.

    Unlike ``label_outer`` this keeps the x labels of a panel whose
    neighbour below is an unused (hidden) grid cell.
    """
    cols = _grid(len(axes), max_cols)[1]
    for i, ax in enumerate(axes):
        bottom = i + cols >= len(axes)
        ax.set_xlabel(xlabel if bottom else "")
        ax.xaxis.set_tick_params(labelbottom=bottom)
        ax.set_ylabel(ylabel if i % cols == 0 else "")
        ax.yaxis.set_tick_params(labelleft=i % cols == 0)


def _ordered(values: pd.Series, preferred: Sequence[str] | None = None) -> list:
    """Unique values in ``preferred`` order first, then in order of appearance."""
    seen = list(dict.fromkeys(values.tolist()))
    if preferred is None:
        return seen
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def _lower_is_better(metric: str, override: bool | None) -> bool:
    if override is not None:
        return not override
    return any(token in str(metric).lower() for token in LOWER_IS_BETTER)


def _pick_metric(table: pd.DataFrame, metric: str | None, what: str) -> str:
    metrics = list(dict.fromkeys(table["metric"].tolist()))
    if metric is None:
        if len(metrics) != 1:
            raise PlotInputError(f"{what}: the table holds metrics {metrics}; choose one with metric=")
        return metrics[0]
    if metric not in metrics:
        raise PlotInputError(f"{what}: metric {metric!r} is not in the table (it has {metrics})")
    return metric


def _mark_stages(ax: Axes, n_layers: int, n1: int, n2: int) -> None:
    """Shade the task-solving stage, draw the N1/N2 boundaries and name the three stages.

    Stage names are written in full where the stage is wide enough and as
    U/T/G otherwise; the figure's footnote (:func:`_stage_note`) explains both.
    """
    if not (0 <= n1 and 0 <= n2 and n1 + n2 <= n_layers):
        raise PlotInputError(f"stage sizes n1={n1}, n2={n2} do not fit {n_layers} layers")
    first, last = n1 - 0.5, n_layers - n2 - 0.5
    ax.axvspan(first, last, color="#000000", alpha=0.06, linewidth=0, zorder=0)
    for x in (first, last):
        ax.axvline(x, color="#000000", linestyle=(0, (4, 3)), linewidth=0.9, zorder=1)
    lo, hi = -0.5, n_layers - 0.5
    spans = ((lo, first), (first, last), (last, hi))
    for name, (a, b) in zip(STAGES, spans):
        if b - a <= 0:
            continue
        wide = (b - a) / (hi - lo) >= 0.34
        ax.text(
            (a + b) / 2,
            1.0,
            name if wide else name[0].upper(),
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=7,
            color="#333333",
        )
    ax.set_xlim(lo, hi)


def _layer_span(first: int, last: int) -> str:
    if last < first:
        return "no layers"
    return f"layer {first}" if first == last else f"layers {first}–{last}"


def _stage_note(n_layers: int, n1: int, n2: int) -> str:
    return (
        f"Stages (dashed lines): U = understanding, {_layer_span(0, n1 - 1)}; T = task solving (shaded), "
        f"{_layer_span(n1, n_layers - n2 - 1)}; G = generation, {_layer_span(n_layers - n2, n_layers - 1)}."
    )


# ---- 1. language ratio per layer ----------------------------------------------------------------


def language_ratio_figure(
    ratios: pd.DataFrame,
    n1: int | None = None,
    n2: int | None = None,
    languages: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """One panel per document language: share of English / that language / other per layer.

    ``ratios`` is the tidy table of :func:`langneurons.logit_lens.language_ratio`
    (columns language, layer, category, share). ``n1``/``n2`` (the first and
    last stage sizes) mark the stage boundaries when given.
    """
    require_columns(ratios, ["language", "layer", "category", "share"], "language ratio")
    unknown = sorted(set(ratios["category"]) - set(CATEGORY_STYLE))
    if unknown:
        raise PlotInputError(f"language ratio: unknown category value(s) {unknown}; use en, target, other")
    languages = list(languages) if languages is not None else _ordered(ratios["language"])
    n_layers = int(ratios["layer"].max()) + 1
    fig = Figure(
        figsize=(3.2 * _grid(len(languages))[1] + 0.4, 2.6 * _grid(len(languages))[0] + 0.9), layout="constrained"
    )
    axes = _panel_axes(fig, len(languages), sharex=True, sharey=True)
    for ax, language in zip(axes, languages):
        part = ratios[ratios["language"] == language]
        if part.empty:
            raise PlotInputError(f"language ratio: no rows for language {language!r}")
        if n1 is not None and n2 is not None:
            _mark_stages(ax, n_layers, n1, n2)
        for category in CATEGORY_STYLE:
            rows = part[part["category"] == category].sort_values("layer")
            if rows.empty:
                continue
            color, linestyle, marker = CATEGORY_STYLE[category]
            ax.plot(
                rows["layer"],
                rows["share"],
                color=color,
                linestyle=linestyle,
                marker=marker,
                markersize=3.5,
                linewidth=1.6,
                zorder=3,
            )
        ax.set_title(f"documents in {language}", fontsize=10, pad=12 if n1 is not None else 6)
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="y", alpha=0.3)
    _label_grid(axes, "layer (0 = first)", "share of decoded top-k tokens")
    handles = [
        Line2D([], [], color=c, linestyle=ls, marker=m, label=CATEGORY_LABEL[k])
        for k, (c, ls, m) in CATEGORY_STYLE.items()
    ]
    # The stage note is the legend's title: a separate bottom text would collide with the legend.
    note = _stage_note(n_layers, n1, n2) if n1 is not None and n2 is not None else None
    fig.legend(
        handles=handles, loc="outside lower center", ncols=3, frameon=False, fontsize=9, title=note, title_fontsize=7
    )
    fig.suptitle(title or "Logit lens: language of the decoded tokens per layer", fontsize=11)
    return fig


def plot_language_ratio(
    ratios: pd.DataFrame, path: str | os.PathLike, n1: int | None = None, n2: int | None = None, **kwargs
) -> tuple[Path, Path]:
    """Write :func:`language_ratio_figure` as PNG and SVG."""
    return save_figure(language_ratio_figure(ratios, n1, n2, **kwargs), path)


# ---- 2. neuron counts per layer -----------------------------------------------------------------


def _site_group(site: pd.Series, by: str) -> pd.Series:
    if by == "site":
        return site
    return site.where(site == "ffn", "attention (q+k+v)").replace({"ffn": "FFN"})


def neuron_counts_figure(
    neurons: pd.DataFrame,
    set_kind: str = "specific",
    by: Literal["structure", "site"] = "structure",
    n_layers: int | None = None,
    n1: int | None = None,
    n2: int | None = None,
    title: str | None = None,
) -> Figure:
    """Neurons per layer in each language's set: panels FFN vs attention (or per site), a line per language.

    ``neurons`` is the neuron-set table (language, set_kind, layer, site,
    index, ...); rows of other set kinds are ignored. Layers without neurons
    count 0, up to ``n_layers`` (default: the deepest layer seen + 1).
    """
    require_columns(neurons, ["language", "set_kind", "layer", "site", "index"], "neuron counts")
    if by not in ("structure", "site"):
        raise PlotInputError(f"neuron counts: by={by!r}; use 'structure' or 'site'")
    kinds = sorted(set(neurons["set_kind"]))
    part = neurons[neurons["set_kind"] == set_kind]
    if part.empty:
        raise PlotInputError(f"neuron counts: no rows with set_kind {set_kind!r} (the table has {kinds})")
    part = part.assign(group=_site_group(part["site"], by))
    order = ["FFN", "attention (q+k+v)"] if by == "structure" else ["ffn", "attn_q", "attn_k", "attn_v"]
    groups = _ordered(part["group"], order)
    languages = _ordered(neurons["language"])
    n_layers = n_layers if n_layers is not None else int(neurons["layer"].max()) + 1
    layers = np.arange(n_layers)
    counts = part.groupby(["group", "language", "layer"]).size()

    rows, cols = _grid(len(groups), max_cols=2)
    fig = Figure(figsize=(4.2 * cols + 1.0, 3.2 * rows + (0.5 if n1 is not None else 0.2)), layout="constrained")
    axes = _panel_axes(fig, len(groups), max_cols=2, sharex=True)
    for ax, group in zip(axes, groups):
        if n1 is not None and n2 is not None:
            _mark_stages(ax, n_layers, n1, n2)
        for i, language in enumerate(languages):
            values = [int(counts.get((group, language, layer), 0)) for layer in layers]
            ax.plot(layers, values, markersize=3.5, linewidth=1.4, label=language, **_series_style(i))
        ax.set_title(group, fontsize=10, pad=12 if n1 is not None else 6)
        ax.set_xlabel("layer (0 = first)")
        ax.set_ylabel("neurons in set (count)")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="y", alpha=0.3)
    for i, ax in enumerate(axes):
        if i + cols < len(axes):  # a panel below shows the shared layer axis
            ax.set_xlabel("")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="language", frameon=False, fontsize=9)
    if n1 is not None and n2 is not None:
        fig.supxlabel(_stage_note(n_layers, n1, n2), fontsize=7, color="#333333")
    fig.suptitle(title or f"Language-{set_kind} neurons per layer", fontsize=11)
    return fig


def plot_neuron_counts(neurons: pd.DataFrame, path: str | os.PathLike, **kwargs) -> tuple[Path, Path]:
    """Write :func:`neuron_counts_figure` as PNG and SVG."""
    return save_figure(neuron_counts_figure(neurons, **kwargs), path)


# ---- 3. overlap heatmap -------------------------------------------------------------------------


def jaccard_matrix(
    neurons: pd.DataFrame, set_kind: str = "specific", languages: Sequence[str] | None = None
) -> tuple[pd.DataFrame, pd.Series]:
    """Jaccard index |A ∩ B| / |A ∪ B| between the languages' neuron sets, and each set's size.

    Neurons are identified by (layer, site, index). Two empty sets have
    Jaccard 0 by convention here (nothing is shared), not NaN.
    """
    require_columns(neurons, ["language", "set_kind", *NEURON_KEY], "overlap")
    part = neurons[neurons["set_kind"] == set_kind]
    languages = list(languages) if languages is not None else _ordered(neurons["language"])
    sets = {
        lang: set(map(tuple, part.loc[part["language"] == lang, list(NEURON_KEY)].itertuples(index=False)))
        for lang in languages
    }
    matrix = pd.DataFrame(0.0, index=languages, columns=languages)
    for a in languages:
        for b in languages:
            union = len(sets[a] | sets[b])
            matrix.loc[a, b] = len(sets[a] & sets[b]) / union if union else 0.0
    return matrix, pd.Series({lang: len(s) for lang, s in sets.items()}, name="n_neurons")


def _annotate_cells(
    ax: Axes, values: np.ndarray, colors: np.ndarray, fmt, fontsize: float, muted: np.ndarray | None = None
) -> None:
    """Write each cell's value in black or white, whichever contrasts with the cell colour (grey where muted)."""
    for (row, col), value in np.ndenumerate(values):
        if np.isnan(value):
            continue
        r, g, b = colors[row, col][:3]
        luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
        color = "white" if luminance < 0.5 else "black"
        ax.text(
            col,
            row,
            fmt(value),
            ha="center",
            va="center",
            fontsize=fontsize,
            color=MUTED_TEXT if muted is not None and muted[row, col] else color,
            zorder=5,
        )


def overlap_figure(neurons: pd.DataFrame, set_kind: str = "specific", title: str | None = None) -> Figure:
    """Jaccard overlap of the languages' neuron sets, one annotated heatmap per detector.

    Tick labels give each set's size. A ``detector`` column (e.g. PLND vs the
    released-code variant) gives one panel per value; without it, one panel.
    """
    require_columns(neurons, ["language", "set_kind", *NEURON_KEY], "overlap")
    detectors = _ordered(neurons["detector"]) if "detector" in neurons.columns else [None]
    languages = _ordered(neurons["language"])
    n = len(languages)
    matrices = {}
    for detector in detectors:
        part = neurons if detector is None else neurons[neurons["detector"] == detector]
        matrix, sizes = jaccard_matrix(part, set_kind, languages)
        values = matrix.to_numpy().copy()
        np.fill_diagonal(values, np.nan)  # self-overlap is 1 by definition; it would swamp the scale
        matrices[detector] = (values, sizes)
    off_diagonal = np.concatenate([v[np.isfinite(v)] for v, _ in matrices.values()] + [np.zeros(1)])
    vmax = max(0.05, math.ceil(float(off_diagonal.max()) * 20) / 20)  # shared across panels, to 0.05
    norm, cmap = Normalize(0, vmax), mpl.colormaps["viridis"].with_extremes(bad="#E5E5E5")
    side = max(2.6, 0.5 * n + 1.2)
    fig = Figure(figsize=(side * len(detectors) + 1.2, side + 0.6), layout="constrained")
    axes = _panel_axes(fig, len(detectors), max_cols=3)
    image = None
    for ax, detector in zip(axes, detectors):
        values, sizes = matrices[detector]
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm)
        _annotate_cells(ax, values, cmap(norm(values)), lambda v: f"{v:.2f}", fontsize=8 if n <= 8 else 6)
        ax.set_xticks(range(n), languages)
        ax.set_yticks(range(n), [f"{lang} ({sizes[lang]})" for lang in languages])
        ax.set_xlabel("language")
        ax.set_ylabel("language (set size, neurons)")
        ax.set_title(f"detector: {detector}" if detector is not None else f"{set_kind} sets", fontsize=10)
    fig.colorbar(image, ax=axes, label="Jaccard index |A∩B| / |A∪B|\n(diagonal omitted)", shrink=0.8)
    name = f"language-{set_kind}" if set_kind in ("activated", "specific", "exclusive") else f"{set_kind.upper()}"
    fig.suptitle(title or f"Overlap of the {name} neuron sets", fontsize=11)
    return fig


def plot_overlap(neurons: pd.DataFrame, path: str | os.PathLike, **kwargs) -> tuple[Path, Path]:
    """Write :func:`overlap_figure` as PNG and SVG."""
    return save_figure(overlap_figure(neurons, **kwargs), path)


# ---- 4. ablation grid ---------------------------------------------------------------------------

ABLATION_COLUMNS: tuple[str, ...] = ("condition", "target_language", "control", "eval_language", "metric", "value")
_ROW_KEYS: tuple[str, ...] = ("detector", "set_kind", "target_language", "condition")


def ablation_changes(
    results: pd.DataFrame, metric: str | None = None, change: Literal["ratio", "difference"] = "ratio"
) -> pd.DataFrame:
    """Each ablation's value against the baseline, random seeds averaged.

    Baseline rows (``condition == "none"``) are averaged per eval language.
    Returns one row per (detector, set_kind, target_language, condition,
    control, eval_language) with ``value`` (seed mean), ``baseline``,
    ``change`` (value / baseline or value - baseline),
    ``n_neurons_deactivated`` (mean, NaN when the column is absent), the
    95% intervals of the ratio and the difference (``ratio_low/high``,
    ``difference_low/high``: the grid's own of a real set, its
    ``seeds_*_low/high`` of the random controls, over items and seeds) and
    ``significant``: 1 where the difference's interval excludes 0 (no
    change), 0 where it covers it (the ratio's interval, against 1, where
    the table has no difference), NaN without intervals. The two agree
    wherever both exist (same resamples, positive baseline).
    """
    require_columns(results, ABLATION_COLUMNS, "ablation grid")
    if change not in ("ratio", "difference"):
        raise PlotInputError(f"ablation grid: change={change!r}; use 'ratio' or 'difference'")
    metric = _pick_metric(results, metric, "ablation grid")
    table = results[results["metric"] == metric].copy()
    baseline_rows = table[table["condition"] == "none"]
    if baseline_rows.empty:
        raise PlotInputError("ablation grid: no baseline rows (condition == 'none') to compare against")
    baseline = baseline_rows.groupby("eval_language")["value"].mean()
    ablations = table[table["condition"] != "none"].copy()
    bad_controls = sorted(set(ablations["control"]) - {"real", "random"})
    if bad_controls:
        raise PlotInputError(f"ablation grid: control value(s) {bad_controls}; use 'real' or 'random'")
    missing = sorted(set(ablations["eval_language"]) - set(baseline.index))
    if missing:
        raise PlotInputError(f"ablation grid: no baseline (condition 'none') for eval language(s) {missing}")
    for key in ("detector", "set_kind"):
        if key not in ablations.columns:
            ablations[key] = ""
    if "n_neurons_deactivated" not in ablations.columns:
        ablations["n_neurons_deactivated"] = np.nan
    ablations["ratio_low"], ablations["ratio_high"] = _change_intervals(ablations, "ratio")
    ablations["difference_low"], ablations["difference_high"] = _change_intervals(ablations, "difference")
    keys = [*_ROW_KEYS, "control", "eval_language"]
    grouped = (
        ablations.fillna({"detector": "", "set_kind": ""})
        .groupby(keys, sort=False, dropna=False)
        .agg(
            value=("value", "mean"),
            n_neurons_deactivated=("n_neurons_deactivated", "mean"),
            ratio_low=("ratio_low", "first"),
            ratio_high=("ratio_high", "first"),
            difference_low=("difference_low", "first"),
            difference_high=("difference_high", "first"),
            n_seeds=("value", "size"),
        )
        .reset_index()
    )
    # the difference's interval decides: it covers 0 exactly when the ratio's covers 1 (same resamples, positive
    # baseline), and it exists where a resample's baseline is 0 and the ratio has none
    by_difference = _excludes(grouped["difference_low"], grouped["difference_high"], 0.0)
    grouped["significant"] = by_difference.fillna(_excludes(grouped["ratio_low"], grouped["ratio_high"], 1.0))
    grouped["baseline"] = grouped["eval_language"].map(baseline)
    if change == "ratio":
        grouped["change"] = grouped["value"] / grouped["baseline"]
    else:
        grouped["change"] = grouped["value"] - grouped["baseline"]
    grouped["metric"] = metric
    return grouped


def _change_intervals(ablations: pd.DataFrame, scale: str) -> tuple[pd.Series, pd.Series]:
    """Each row's interval of its ``scale`` (ratio or difference) change from the baseline: a real set's own, a
    random control's over its seeds (``seeds_<scale>_low/high``; a single seed's own interval serves too). NaN
    where the table has none."""
    nan = pd.Series(np.nan, index=ablations.index)
    if not {f"{scale}_low", f"{scale}_high"} <= set(ablations.columns):
        return nan, nan
    low, high = ablations[f"{scale}_low"].astype(float), ablations[f"{scale}_high"].astype(float)
    random = ablations["control"] == "random"
    if {f"seeds_{scale}_low", f"seeds_{scale}_high"} <= set(ablations.columns):
        low = low.where(~random, ablations[f"seeds_{scale}_low"].astype(float))
        high = high.where(~random, ablations[f"seeds_{scale}_high"].astype(float))
    else:  # one seed's interval is not the interval of several seeds' mean
        seeds = ablations.groupby([*_ROW_KEYS, "eval_language"], dropna=False)["value"].transform("size")
        several = random & (seeds > 1)
        low, high = low.where(~several), high.where(~several)
    return low, high


def _excludes(low: pd.Series, high: pd.Series, null: float) -> pd.Series:
    """1.0 where the interval [low, high] lies on one side of ``null`` (an effect), 0.0 where it covers it,
    NaN where there is no interval."""
    known = low.notna() & high.notna()
    return ((low > null) | (high < null)).astype(float).where(known)


def _log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks (and their reciprocals) within [low, high]: readable on a log colour bar."""
    ticks = {1.0}
    for exponent in range(-6, 7):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if low <= value <= high:
                ticks.add(value)
    return sorted(ticks)


def _row_label(key: tuple, varying: dict[str, bool], n: float) -> str:
    detector, set_kind, target, condition = key
    parts = [p for p, show in ((detector, varying["detector"]), (set_kind, varying["set_kind"])) if show and p]
    parts = list(dict.fromkeys(parts))  # LAPE's sets have set_kind "lape": say it once
    prefix = f"[{' '.join(parts)}] " if parts else ""
    size = f" (n={n:.0f})" if not np.isnan(n) else ""
    return f"{prefix}{target}: {condition}{size}"


def _format_change(value: float, change: str, bound: float) -> str:
    """Cell text: ratios to 2 decimals; differences with the decimals the colour range needs (all alike)."""
    if change == "difference":
        decimals = max(0, 2 - math.floor(math.log10(bound)))
        return f"{value:+.{decimals}f}"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def ablation_grid_figure(
    results: pd.DataFrame,
    metric: str | None = None,
    change: Literal["ratio", "difference"] = "ratio",
    higher_is_better: bool | None = None,
    conditions: Sequence[str] | None = None,
    eval_languages: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Ablations (rows) x evaluation languages (columns), as change vs the unablated model.

    Left panel: the language-specific neurons; right panel: the random
    controls of the same sizes (seeds averaged). Colours are centred on "no
    change" (ratio 1 on a log scale, or difference 0) and oriented so that red
    always means damage: for lower-is-better metrics (ppl, loss; guessed from
    the metric name unless ``higher_is_better`` is given) a rise is red.
    Cells where the evaluation language is the ablated language are outlined.
    """
    data = ablation_changes(results, metric, change)
    metric = data["metric"].iloc[0]
    lower_better = _lower_is_better(metric, higher_is_better)
    real = data[data["control"] == "real"]
    if real.empty:
        raise PlotInputError("ablation grid: no rows with control == 'real'")
    varying = {k: data[k].nunique() > 1 for k in ("detector", "set_kind")}
    condition_order = _ordered(data["condition"], conditions)
    row_keys = sorted(
        dict.fromkeys(tuple(r) for r in real[list(_ROW_KEYS)].itertuples(index=False)),
        key=lambda k: (
            _ordered(data["detector"]).index(k[0]),
            _ordered(data["set_kind"]).index(k[1]),
            _ordered(data["target_language"]).index(k[2]),
            condition_order.index(k[3]),
        ),
    )
    columns = list(eval_languages) if eval_languages is not None else _ordered(data["eval_language"])
    sizes = real.groupby(list(_ROW_KEYS), sort=False)["n_neurons_deactivated"].mean()
    labels = [_row_label(k, varying, sizes.get(k, np.nan)) for k in row_keys]

    grids, effects = {}, {}
    for control in ("real", "random"):
        part = data[data["control"] == control].set_index([*_ROW_KEYS, "eval_language"])
        grids[control] = np.array([[part["change"].get((*k, c), np.nan) for c in columns] for k in row_keys],
                                  dtype=float)  # fmt: skip
        effects[control] = np.array([[part["significant"].get((*k, c), np.nan) for c in columns] for k in row_keys],
                                    dtype=float)  # fmt: skip
    finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    if change == "ratio":
        positive = finite[finite > 0]
        spread = float(np.max(np.abs(np.log(positive)))) if positive.size else 0.1
        bound = math.exp(max(spread, math.log(1.1)))
        norm: Normalize = LogNorm(1 / bound, bound, clip=True)
        unit = f"{metric} ablated / baseline (log scale)"
    else:
        bound = max(float(np.max(np.abs(finite))) if finite.size else 0.1, 1e-9)
        norm = Normalize(-bound, bound, clip=True)
        unit = f"{metric} ablated − baseline"
    cmap = mpl.colormaps["RdBu_r" if lower_better else "RdBu"].with_extremes(bad="#DDDDDD")

    width = 2 * (0.55 * len(columns) + 0.6) + max(len(s) for s in labels) * 0.065 + 1.6
    # a floor on the height leaves room for the y label and the two-line colour-bar label of short grids
    fig = Figure(figsize=(width, max(3.4, 0.32 * len(row_keys) + 1.9)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    image = None
    for ax, control in zip(axes, ("real", "random")):
        values = grids[control]
        masked = np.ma.masked_invalid(np.where(values > 0, values, np.nan) if change == "ratio" else values)
        image = ax.imshow(masked, cmap=cmap, norm=norm, aspect="auto")
        no_effect = effects[control] == 0  # the 95% interval covers "no change": drawn grey and hatched
        colors = cmap(norm(masked))
        colors[no_effect] = mpl.colors.to_rgba(NO_EFFECT_COLOR)
        for row, col in zip(*np.nonzero(no_effect)):
            ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, facecolor=NO_EFFECT_COLOR, edgecolor="#AAAAAA",
                                   hatch="////", linewidth=0, zorder=3))  # fmt: skip
        _annotate_cells(
            ax,
            values,
            colors,
            lambda v: _format_change(v, change, bound),
            fontsize=7 if len(columns) <= 8 else 6,
            muted=no_effect,
        )
        for row, key in enumerate(row_keys):
            if key[2] in columns:
                ax.add_patch(
                    Rectangle(
                        (columns.index(key[2]) - 0.5, row - 0.5),
                        1,
                        1,
                        fill=False,
                        edgecolor="black",
                        linewidth=1.4,
                        zorder=4,
                    )
                )
        for row in range(1, len(row_keys)):
            if row_keys[row][:3] != row_keys[row - 1][:3]:  # a new ablated language (or detector/set)
                ax.axhline(row - 0.5, color="white", linewidth=3, zorder=2)
        ax.set_xticks(range(len(columns)), columns)
        ax.set_yticks(range(len(row_keys)), labels, fontsize=8)
        ax.set_xlabel("evaluation language")
        ax.set_title(
            "language-specific neurons" if control == "real" else "random neurons (same sizes, seed mean)", fontsize=10
        )
        ax.tick_params(axis="y", length=0)
    axes[0].set_ylabel("ablated set: target, condition")
    direction = "red = worse (lower is better)" if lower_better else "red = worse (higher is better)"
    bar = fig.colorbar(image, ax=list(axes), label=f"{unit}\n{direction}", shrink=0.9)
    if change == "ratio":
        bar.set_ticks(_log_ticks(1 / bound, bound))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        bar.ax.minorticks_off()
    known = np.concatenate([np.isfinite(e).ravel() for e in effects.values()]).any()
    note = ("grey hatched: the 95% interval includes no change" if known
            else "no intervals in the table: every change is drawn as measured")  # fmt: skip
    fig.suptitle(
        title
        or f"Deactivation: change in {metric} (outlined: evaluated on the ablated language)\n{note}",
        fontsize=10,
    )
    return fig


def plot_ablation_grid(results: pd.DataFrame, path: str | os.PathLike, **kwargs) -> tuple[Path, Path]:
    """Write :func:`ablation_grid_figure` as PNG and SVG."""
    return save_figure(ablation_grid_figure(results, **kwargs), path)


# ---- 5. fine-tuning gains -----------------------------------------------------------------------

FINETUNE_COLUMNS: tuple[str, ...] = ("method", "target_language", "eval_language", "metric", "value", "phase")


def finetune_gains(
    results: pd.DataFrame,
    metric: str | None = None,
    change: Literal["relative", "difference"] = "relative",
    higher_is_better: bool | None = None,
) -> pd.DataFrame:
    """Improvement from fine-tuning on the target language and, on average, on the others.

    Seeds are averaged. A "before" row with an empty ``method`` is the shared
    base model and serves every method. ``gain`` is signed so that positive
    means better: (after - before) for higher-is-better metrics, (before -
    after) for lower-is-better ones (ppl, loss); ``relative`` divides by
    ``before`` and gives percent. Returns one row per (method,
    target_language) with ``gain_target``, ``gain_others`` (mean over the
    other evaluation languages), ``gain_others_std`` and ``n_others``.

    With the paired intervals of :func:`langneurons.steps.finetune.finetune_results_step`
    on the "after" rows (``ratio_low/high``, ``difference_low/high`` against
    the model before fine-tuning), each gain gets its 95% interval
    (``gain_target_low/high``; for the other languages the mean of their
    bounds, which is conservative) and ``significant_target/others``: 1 where
    the interval excludes 0, 0 where it covers it, NaN without intervals.
    """
    require_columns(results, FINETUNE_COLUMNS, "fine-tuning gains")
    if change not in ("relative", "difference"):
        raise PlotInputError(f"fine-tuning gains: change={change!r}; use 'relative' or 'difference'")
    bad = sorted(set(results["phase"]) - {"before", "after"})
    if bad:
        raise PlotInputError(f"fine-tuning gains: phase value(s) {bad}; use 'before' or 'after'")
    metric = _pick_metric(results, metric, "fine-tuning gains")
    table = results[results["metric"] == metric]
    keys = ["method", "target_language", "eval_language"]
    after_rows = table[table["phase"] == "after"].copy()
    for column in ("ratio_low", "ratio_high", "difference_low", "difference_high"):
        if column not in after_rows.columns:
            after_rows[column] = np.nan
    after = after_rows.groupby(keys).agg(
        after=("value", "mean"),
        ratio_low=("ratio_low", "first"),
        ratio_high=("ratio_high", "first"),
        difference_low=("difference_low", "first"),
        difference_high=("difference_high", "first"),
        n_seeds=("value", "size"),
    ).reset_index()
    several = after["n_seeds"] > 1  # one seed's interval is not the interval of several seeds' mean
    after.loc[several, ["ratio_low", "ratio_high", "difference_low", "difference_high"]] = np.nan
    before_rows = table[table["phase"] == "before"]
    own = before_rows.dropna(subset=["method"]).groupby(keys)["value"].mean().rename("before_own")
    shared = before_rows[before_rows["method"].isna()].groupby(["target_language", "eval_language"])["value"]
    shared = shared.mean().rename("before_shared")
    merged = after.join(own, on=keys).join(shared, on=["target_language", "eval_language"])
    if "before_shared" not in merged:
        merged["before_shared"] = np.nan
    merged["before"] = merged["before_own"].fillna(merged["before_shared"])
    lacking = merged[merged["before"].isna()]
    if not lacking.empty:
        first = lacking.iloc[0]
        raise PlotInputError(
            f"fine-tuning gains: no 'before' value for method {first['method']!r}, target "
            f"{first['target_language']!r}, eval language {first['eval_language']!r}"
        )
    sign = -1.0 if _lower_is_better(metric, higher_is_better) else 1.0
    merged["gain"] = sign * (merged["after"] - merged["before"])
    differences = [sign * merged[f"difference_{end}"] for end in ("low", "high")]
    if change == "relative":
        merged["gain"] = 100.0 * merged["gain"] / merged["before"].abs()
        # (after - before) / |before| = ratio - 1 for a positive before: the ratio's interval maps exactly; where
        # it has none (a resample's before was 0), the difference's, scaled by the whole sample's before
        ends = [(100.0 * sign * (merged[f"ratio_{end}"] - 1.0)).fillna(100.0 * d / merged["before"].abs())
                for end, d in zip(("low", "high"), differences)]  # fmt: skip
    else:
        ends = differences
    merged["gain_low"], merged["gain_high"] = np.fmin(*ends), np.fmax(*ends)
    # whether a gain is an effect: its difference's interval (always defined) excludes 0
    merged["effect"] = _excludes(np.fmin(*differences), np.fmax(*differences), 0.0).fillna(
        _excludes(merged["gain_low"], merged["gain_high"], 0.0)
    )
    rows = []
    for (method, target), part in merged.groupby(["method", "target_language"], sort=False):
        on_target = part[part["eval_language"] == target]
        others = part[part["eval_language"] != target]
        row = {"method": method, "target_language": target, "metric": metric}
        for name, rows_of in (("target", on_target), ("others", others)):
            row[f"gain_{name}"] = float(rows_of["gain"].mean()) if len(rows_of) else np.nan
            # the mean of the languages' bounds: conservative for the mean of independent languages' gains
            bounds = rows_of[["gain_low", "gain_high"]]
            known = len(rows_of) and bounds.notna().all().all()
            row[f"gain_{name}_low"] = float(bounds["gain_low"].mean()) if known else np.nan
            row[f"gain_{name}_high"] = float(bounds["gain_high"].mean()) if known else np.nan
        row["gain_others_std"] = float(others["gain"].std(ddof=0)) if len(others) else np.nan
        row["n_others"] = int(len(others))
        row["significant_target"] = float(on_target["effect"].iloc[0]) if len(on_target) else np.nan
        rows.append(row)
    gains = pd.DataFrame(rows)
    gains["significant_others"] = _excludes(gains["gain_others_low"], gains["gain_others_high"], 0.0)
    return gains


def finetune_gains_figure(
    results: pd.DataFrame,
    metric: str | None = None,
    change: Literal["relative", "difference"] = "relative",
    higher_is_better: bool | None = None,
    methods: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Grouped bars per target language and method: gain on the target, mean gain on the other languages.

    Positive is better whatever the metric (see :func:`finetune_gains`). The
    error bars are the gains' 95% intervals where the table has them, and a
    bar whose interval covers 0 is drawn hollow and hatched grey: it is not
    an effect. Without intervals, the right panel shows the spread (std)
    over the other languages.
    """
    gains = finetune_gains(results, metric, change, higher_is_better)
    metric = gains["metric"].iloc[0]
    after = results[results["phase"] == "after"]  # order of appearance in the input, not sorted
    methods = _ordered(after["method"], methods)
    targets = _ordered(after["target_language"])
    unit = "%" if change == "relative" else metric
    fig = Figure(figsize=(max(7.0, 1.2 * len(targets) * 2 + 2), 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    width = 0.8 / len(methods)
    x = np.arange(len(targets))
    intervals = gains[["gain_target_low", "gain_others_low"]].notna().any().any()
    others_title = "on the other languages (mean, 95% interval)" if intervals else "on the other languages (mean ± std)"
    for ax, column, panel in (
        (axes[0], "gain_target", "on the fine-tuned language"),
        (axes[1], "gain_others", others_title),
    ):
        for i, method in enumerate(methods):
            part = gains[gains["method"] == method].set_index("target_language").reindex(targets)
            positions = x + (i - (len(methods) - 1) / 2) * width
            error = part["gain_others_std"] if column == "gain_others" and not intervals else None
            if intervals:  # drawn from low to high: a percentile interval need not hold the estimate
                low, high = part[f"{column}_low"].to_numpy(), part[f"{column}_high"].to_numpy()
                ax.errorbar(positions, (low + high) / 2, yerr=(high - low) / 2, fmt="none", ecolor="black",
                            elinewidth=0.8, capsize=2, zorder=3)  # fmt: skip
            color = OKABE_ITO[i % len(OKABE_ITO)]
            bars = ax.bar(
                positions,
                part[column],
                width,
                yerr=error,
                capsize=2,
                color=color,
                hatch=("", "//", "..", "xx", "\\\\")[i % 5],
                edgecolor="white",
                linewidth=0.5,
                label=method,
                error_kw={"elinewidth": 0.8},
            )
            no_effect = part[column.replace("gain_", "significant_")].to_numpy() == 0
            for bar in np.asarray(bars.patches, dtype=object)[no_effect]:
                bar.set(facecolor=NO_EFFECT_COLOR, edgecolor=color, hatch="////", linewidth=1.0)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, targets)
        ax.set_xlabel("fine-tuned (target) language")
        ax.set_title(panel, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.yaxis.set_tick_params(labelleft=True)
    axes[0].set_ylabel(f"{metric} gain ({unit}, positive = better)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="method", frameon=False, fontsize=9)
    note = "hollow grey bars: the 95% interval includes no change" if intervals else "no intervals in the table"
    fig.suptitle(title or f"Fine-tuning: change in {metric}\n{note}", fontsize=11)
    return fig


def plot_finetune_gains(results: pd.DataFrame, path: str | os.PathLike, **kwargs) -> tuple[Path, Path]:
    """Write :func:`finetune_gains_figure` as PNG and SVG."""
    return save_figure(finetune_gains_figure(results, **kwargs), path)


# ---- 6. stability vs number of documents --------------------------------------------------------


def _dodge(x: np.ndarray, i: int, n: int, sizes: Sequence[float], log_x: bool) -> np.ndarray:
    """Shift series i of n sideways a little so that error bars at the same x do not hide each other."""
    offset = i - (n - 1) / 2
    if log_x:
        return x * 10 ** (0.012 * offset)
    spacing = min(np.diff(sizes)) if len(sizes) > 1 else max(abs(sizes[0]), 1.0)
    return x + 0.03 * spacing * offset


STABILITY_PANELS = {
    "halves": "disjoint halves of the documents",
    "subsample": "n documents vs all documents",
}


def stability_figure(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Jaccard similarity of neuron sets found on independent document samples vs their size.

    One line per language: the mean over replicates (halves/seeds), error
    bars one standard deviation; the languages are dodged sideways a little.
    The x axis is logarithmic when the sizes span a factor of 8 or more. A
    ``kind`` column (from :func:`langneurons.selection.set_stability`) splits
    the comparisons into panels: disjoint halves, and subsamples vs all.
    """
    require_columns(table, ["language", "n_docs", "jaccard"], "stability")
    if table["jaccard"].notna().sum() == 0:
        raise PlotInputError("stability: every Jaccard is NaN (all compared sets are empty)")
    kinds = _ordered(table["kind"], list(STABILITY_PANELS)) if "kind" in table else [None]
    languages = _ordered(table["language"])
    fig = Figure(figsize=(3.0 + 2.9 * len(kinds), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(kinds), sharey=True))
    replicates = 1
    for ax, kind in zip(axes, kinds):
        part_of_kind = table if kind is None else table[table["kind"] == kind]
        stats = part_of_kind.groupby(["language", "n_docs"], sort=False)["jaccard"].agg(["mean", "std", "count"])
        stats = stats.reset_index()
        stats["std"] = stats["std"].fillna(0.0)
        replicates = max(replicates, int(stats["count"].max()))
        sizes = sorted(set(part_of_kind["n_docs"]))
        log_x = sizes[0] > 0 and sizes[-1] / sizes[0] >= 8
        for i, language in enumerate(languages):
            part = stats[stats["language"] == language].sort_values("n_docs")
            if part.empty:
                continue
            ax.errorbar(
                _dodge(part["n_docs"].to_numpy(float), i, len(languages), sizes, log_x),
                part["mean"],
                yerr=part["std"],
                capsize=3,
                markersize=4,
                linewidth=1.4,
                label=language,
                **_series_style(i),
            )
        if log_x:
            ax.set_xscale("log")
        if len(sizes) == 1:  # one size: keep the dodged points close together, as on a multi-size axis
            ax.set_xlim(sizes[0] * 0.5, sizes[0] * 1.5)
        ax.set_xticks(sizes, [str(int(s)) for s in sizes])
        ax.minorticks_off()
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("documents per language in each set (count)")
        ax.grid(alpha=0.3)
        if kind is not None:
            ax.set_title(STABILITY_PANELS.get(kind, str(kind)), fontsize=9)
    axes[0].set_ylabel("Jaccard similarity of the two sets")
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(
        list(handles.values()), list(handles), title="language", loc="outside right center", frameon=False, fontsize=9
    )
    fig.suptitle(title or f"Stability of the neuron sets (mean ± std over {replicates} replicate(s))", fontsize=10)
    return fig


def plot_stability(table: pd.DataFrame, path: str | os.PathLike, **kwargs) -> tuple[Path, Path]:
    """Write :func:`stability_figure` as PNG and SVG."""
    return save_figure(stability_figure(table, **kwargs), path)


# ---- selectivity frontier -----------------------------------------------------------------------

SELECTIVITY_COLUMNS: tuple[str, ...] = (
    "method", "top_k", "set_kind", "target_language", "ratio_on_target", "mean_ratio_others",
)  # fmt: skip


def pareto_front(damage: Sequence[float], effect: Sequence[float]) -> np.ndarray:
    """Bool mask of the points no other point beats: at most the damage and at least the effect, one strictly.

    Of identical points one is kept; points with a NaN coordinate are never on the front.
    """
    damage, effect = np.asarray(damage, dtype=np.float64), np.asarray(effect, dtype=np.float64)
    valid = np.isfinite(damage) & np.isfinite(effect)
    front = np.zeros(len(damage), dtype=bool)
    # by damage (ties: the larger effect first), a point is on the front when it beats every effect before it
    best = -np.inf
    for i in np.lexsort((-effect, damage)):
        if valid[i] and effect[i] > best:
            front[i] = True
            best = effect[i]
    return front


def selectivity_points(table: pd.DataFrame, target_language: str | None = None) -> pd.DataFrame:
    """One point per (method, top_k, set_kind): ``effect`` (ratio on the target) and ``damage`` (mean ratio on
    the others), geometric means over the target languages (or one target's), and ``on_front``."""
    require_columns(table, SELECTIVITY_COLUMNS, "selectivity frontier")
    if target_language is not None:
        table = table[table["target_language"] == target_language]
        if table.empty:
            raise PlotInputError(f"selectivity frontier: no rows of target language {target_language!r}")
    points = (
        table.assign(log_effect=np.log(table["ratio_on_target"]), log_damage=np.log(table["mean_ratio_others"]))
        .groupby(["method", "top_k", "set_kind"], sort=True)[["log_effect", "log_damage"]]
        .mean()
        .reset_index()
    )
    points["effect"], points["damage"] = np.exp(points.pop("log_effect")), np.exp(points.pop("log_damage"))
    points["on_front"] = pareto_front(points["damage"], points["effect"])
    return points


def _frontier_panel(
    ax: Axes, points: pd.DataFrame, methods: list, top_ks: list, goal: dict | None, low: float, high: float
) -> None:
    if goal is not None:
        # the goal corner: effect >= ratio_on_target and effect >= selectivity * damage
        xs = np.linspace(low, high, 50)
        floor = np.maximum(goal["ratio_on_target"], goal["selectivity"] * xs)
        ax.fill_between(xs, floor, high, where=floor < high, color="#009E73", alpha=0.12, lw=0, label="goal")
    ax.plot([low, high], [low, high], color="#7F7F7F", lw=0.8, ls=":", label="no selectivity (y = x)")
    front = points[points["on_front"]].sort_values("damage")
    ax.plot(front["damage"], front["effect"], color="#000000", lw=1.0, ls="-", label="Pareto front", zorder=1)
    for _, point in points.iterrows():
        color = OKABE_ITO[methods.index(point["method"]) % len(OKABE_ITO)]
        marker = MARKERS[top_ks.index(point["top_k"]) % len(MARKERS)]
        ax.scatter(point["damage"], point["effect"], color=color, marker=marker, s=36 if point["on_front"] else 18,
                   edgecolor="black" if point["on_front"] else "none", zorder=2)  # fmt: skip
        ax.annotate(point["set_kind"], (point["damage"], point["effect"]), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")  # fmt: skip
    # log axes: the narrow rules' ratios of a few percent and the wide rules' factors of ten both stay readable
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis, limits in ((ax.xaxis, ax.set_xlim), (ax.yaxis, ax.set_ylim)):
        limits(low * 0.99, high)
        ticks = [t for t in _log_ticks(low, high) if low <= t <= high]
        axis.set_major_locator(FixedLocator(ticks if len(ticks) > 1 else [low, high]))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
        axis.set_minor_formatter(NullFormatter())


def selectivity_frontier_figure(
    table: pd.DataFrame, goal: dict | None = None, per_language: bool = True, title: str | None = None
) -> Figure:
    """Ratio on the set's own language against the mean ratio on the others (perplexity with the set
    deactivated over without, log axes), one point per rule, front marked.

    The first panel takes geometric means over the target languages; with ``per_language`` one panel per target
    follows. Colour: scoring method; marker: top-k; the shaded corner is ``goal`` (``ratio_on_target``,
    ``selectivity``).
    """
    require_columns(table, SELECTIVITY_COLUMNS, "selectivity frontier")
    targets = sorted(table["target_language"].unique()) if per_language else []
    panels = [(None, "all target languages (geometric mean)")] + [(lang, f"target {lang}") for lang in targets]
    methods, top_ks = sorted(table["method"].unique()), sorted(table["top_k"].unique(), key=float)
    fig = Figure(figsize=(3.2 * min(len(panels), 4), 3.0 * math.ceil(len(panels) / 4) + 0.6), layout="constrained")
    axes = _panel_axes(fig, len(panels), sharex=True, sharey=True)
    every = pd.concat([selectivity_points(table, target) for target, _ in panels])
    low = min(1.0, every["damage"].min(), every["effect"].min())
    high = max(every["damage"].max(), every["effect"].max()) * 1.05
    for ax, (target, label) in zip(axes, panels):
        _frontier_panel(ax, selectivity_points(table, target), methods, top_ks, goal, low, high)
        ax.set_title(label, fontsize=9)
    _label_grid(axes, "mean ratio on the others", "ratio on the own language")
    handles = [Line2D([], [], color=OKABE_ITO[i % len(OKABE_ITO)], marker="o", ls="", label=f"method {m}")
               for i, m in enumerate(methods)]  # fmt: skip
    handles += [Line2D([], [], color="#7F7F7F", marker=MARKERS[i % len(MARKERS)], ls="", label=f"top-k {k}")
                for i, k in enumerate(top_ks)]  # fmt: skip
    handles += axes[0].get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=7, frameon=False)
    fig.suptitle(title or "Selectivity of the set rules: damage to the own language vs the others", fontsize=11)
    return fig


def plot_selectivity_frontier(table: pd.DataFrame, path: str | os.PathLike, **kwargs) -> tuple[Path, Path]:
    """:func:`selectivity_frontier_figure`, saved as PNG and SVG."""
    return save_figure(selectivity_frontier_figure(table, **kwargs), path)
