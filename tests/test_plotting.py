"""Every figure renders from small synthetic tables; bad tables fail with the column's name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from langneurons import plotting
from langneurons.plotting import PlotInputError

LANGUAGES = ["en", "de", "fr", "zh", "sw"]
N_LAYERS = 12


def ratio_table() -> pd.DataFrame:
    """A language-ratio table shaped like the paper's: English peaks in the middle layers."""
    rows = []
    layers = np.arange(N_LAYERS)
    bump = np.exp(-((layers - N_LAYERS / 2) ** 2) / 8)
    for i, lang in enumerate(LANGUAGES):
        en = 0.1 + 0.6 * bump if lang != "en" else 0.8 - 0.1 * bump
        target = (0.7 - 0.6 * bump) * (1 - 0.05 * i) if lang != "en" else None
        shares = {"en": en, "target": target, "other": 1 - en - (target if target is not None else 0)}
        for category, values in shares.items():
            if values is None:
                continue
            rows += [
                {"language": lang, "layer": int(layer), "category": category, "share": float(v)}
                for layer, v in zip(layers, values)
            ]
    return pd.DataFrame(rows)


def neuron_table(detector: str | None = None, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for lang in LANGUAGES:
        for site, size in (("ffn", 64), ("attn_q", 16), ("attn_k", 8), ("attn_v", 8)):
            for layer in range(N_LAYERS):
                weight = 1 + 3 * (layer < 3 or layer >= N_LAYERS - 2)  # more at the ends, as in the paper
                chosen = rng.choice(size, size=min(size, int(rng.poisson(weight * size / 16))), replace=False)
                rows += [
                    {
                        "language": lang,
                        "set_kind": "specific",
                        "layer": layer,
                        "site": site,
                        "index": int(k),
                        "frequency": 1.0,
                        "mean_importance": 0.5,
                    }
                    for k in chosen
                ]
    table = pd.DataFrame(rows)
    table = pd.concat([table, table.head(40).assign(set_kind="activated")], ignore_index=True)
    return table.assign(detector=detector) if detector else table


def ablation_table() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    conditions = ["understanding", "task_attention", "task_ffn", "generation", "all"]
    base = {lang: 100 + 50 * i for i, lang in enumerate(LANGUAGES)}
    rows = [
        {
            "condition": "none",
            "detector": None,
            "set_kind": None,
            "target_language": None,
            "control": None,
            "seed": 0,
            "eval_language": e,
            "metric": "ppl",
            "value": v,
            "n_neurons_deactivated": 0,
        }
        for e, v in base.items()
    ]
    for target in LANGUAGES[1:4]:
        for condition in conditions:
            n = int(rng.integers(50, 400))
            for e in LANGUAGES:
                hurt = (8.0 if condition == "all" else 1.6) if e == target else 1.1
                rows.append(
                    {
                        "condition": condition,
                        "detector": "plnd",
                        "set_kind": "specific",
                        "target_language": target,
                        "control": "real",
                        "seed": 0,
                        "eval_language": e,
                        "metric": "ppl",
                        "value": base[e] * hurt,
                        "n_neurons_deactivated": n,
                    }
                )
                for seed in range(3):
                    rows.append(
                        {
                            "condition": condition,
                            "detector": "plnd",
                            "set_kind": "specific",
                            "target_language": target,
                            "control": "random",
                            "seed": seed,
                            "eval_language": e,
                            "metric": "ppl",
                            "value": base[e] * rng.uniform(0.98, 1.05),
                            "n_neurons_deactivated": n,
                        }
                    )
    return pd.DataFrame(rows)


def finetune_table() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    rows = [
        {
            "method": None,
            "target_language": t,
            "eval_language": e,
            "metric": "accuracy",
            "phase": "before",
            "value": 0.5,
        }
        for t in LANGUAGES[1:]
        for e in LANGUAGES
    ]
    for method, gain in (("specific neurons", 0.03), ("random neurons", 0.01), ("full", 0.05), ("LoRA", 0.04)):
        for t in LANGUAGES[1:]:
            for e in LANGUAGES:
                delta = gain if e == t else -gain / 2 + rng.normal(0, 0.005)
                rows.append(
                    {
                        "method": method,
                        "target_language": t,
                        "eval_language": e,
                        "metric": "accuracy",
                        "phase": "after",
                        "value": 0.5 + delta,
                    }
                )
    return pd.DataFrame(rows)


def stability_table() -> pd.DataFrame:
    """Like selection.set_stability: disjoint halves (of 100 documents) and subsamples against all 200."""
    rng = np.random.default_rng(3)
    draws = [("halves", 100)] + [("subsample", n) for n in (10, 25, 50, 100, 200)]
    return pd.DataFrame(
        [
            {
                "language": lang,
                "n_docs": n,
                "replicate": r,
                "jaccard": min(1, 1 - 0.8 / np.sqrt(n / 10) + rng.normal(0, 0.03)),
                "kind": kind,
            }
            for lang in LANGUAGES
            for kind, n in draws
            for r in range(4)
        ]
    )


def test_stability_has_a_panel_per_comparison():
    fig = plotting.stability_figure(stability_table())
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == list(plotting.STABILITY_PANELS.values())
    without_kind = plotting.stability_figure(stability_table().query("kind == 'subsample'").drop(columns="kind"))
    assert len(without_kind.axes) == 1
    with pytest.raises(PlotInputError, match="every Jaccard is NaN"):
        plotting.stability_figure(stability_table().assign(jaccard=np.nan))


def render_all(directory) -> dict[str, tuple]:
    """Every figure from the synthetic tables (also handy for looking at them by eye)."""
    neurons = pd.concat([neuron_table("plnd", 0), neuron_table("released_code", 1)], ignore_index=True)
    return {
        "language_ratio": plotting.plot_language_ratio(ratio_table(), directory / "language_ratio", n1=3, n2=2),
        "neuron_counts": plotting.plot_neuron_counts(neuron_table(), directory / "neuron_counts", n1=3, n2=2),
        "neuron_counts_site": plotting.plot_neuron_counts(
            neuron_table(), directory / "neuron_counts_site.png", by="site"
        ),
        "overlap": plotting.plot_overlap(neurons, directory / "overlap"),
        "ablation": plotting.plot_ablation_grid(ablation_table(), directory / "ablation"),
        "finetune": plotting.plot_finetune_gains(finetune_table(), directory / "finetune"),
        "stability": plotting.plot_stability(stability_table(), directory / "stability"),
    }


def test_every_figure_writes_png_and_svg(tmp_path):
    written = render_all(tmp_path)
    for name, (png, svg) in written.items():
        assert png.suffix == ".png" and svg.suffix == ".svg", name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        assert "<svg" in svg.read_text()[:2000], name
    assert not list(tmp_path.glob(".*tmp")), "temporary files left behind"


def test_svg_is_reproducible(tmp_path):
    a = plotting.plot_stability(stability_table(), tmp_path / "a")[1].read_text()
    b = plotting.plot_stability(stability_table(), tmp_path / "b")[1].read_text()
    assert a == b


@pytest.mark.parametrize(
    ("function", "table", "column"),
    [
        (plotting.language_ratio_figure, ratio_table(), "share"),
        (plotting.neuron_counts_figure, neuron_table(), "site"),
        (plotting.overlap_figure, neuron_table(), "index"),
        (plotting.ablation_grid_figure, ablation_table(), "eval_language"),
        (plotting.finetune_gains_figure, finetune_table(), "phase"),
        (plotting.stability_figure, stability_table(), "jaccard"),
    ],
)
def test_missing_column_is_named(function, table, column):
    with pytest.raises(PlotInputError, match=f"lacks column.*'{column}'"):
        function(table.drop(columns=[column]))


def test_other_bad_inputs_explain_themselves(tmp_path):
    with pytest.raises(PlotInputError, match="no rows with set_kind 'exclusive'"):
        plotting.neuron_counts_figure(neuron_table(), set_kind="exclusive")
    with pytest.raises(PlotInputError, match="do not fit 12 layers"):
        plotting.language_ratio_figure(ratio_table(), n1=8, n2=8)
    with pytest.raises(PlotInputError, match="no baseline"):
        plotting.ablation_grid_figure(ablation_table().query("condition != 'none'"))
    with pytest.raises(PlotInputError, match="choose one with metric="):
        plotting.ablation_grid_figure(pd.concat([ablation_table(), ablation_table().assign(metric="acc")]))
    with pytest.raises(PlotInputError, match="no rows"):
        plotting.stability_figure(stability_table().head(0))
    assert not (tmp_path / "x.png").exists()


def test_jaccard_matrix():
    table = pd.DataFrame(
        {
            "language": ["a", "a", "a", "b", "b", "c"],
            "set_kind": "specific",
            "layer": [0, 0, 1, 0, 1, 2],
            "site": ["ffn", "ffn", "ffn", "ffn", "attn_q", "ffn"],
            "index": [1, 2, 1, 1, 1, 0],
        }
    )
    matrix, sizes = plotting.jaccard_matrix(table)
    assert matrix.loc["a", "b"] == pytest.approx(1 / 4) and matrix.loc["b", "a"] == pytest.approx(1 / 4)
    assert matrix.loc["a", "a"] == 1 and matrix.loc["a", "c"] == 0
    assert sizes.to_dict() == {"a": 3, "b": 2, "c": 1}


def test_ablation_changes_average_seeds_against_the_baseline():
    changes = plotting.ablation_changes(ablation_table())
    real = changes[(changes["control"] == "real") & (changes["condition"] == "all")]
    on_target = real[real["eval_language"] == real["target_language"]]
    assert on_target["change"].tolist() == pytest.approx([8.0] * 3)
    random = changes[changes["control"] == "random"]
    assert len(random) == len(changes) / 2  # three seeds became one row
    assert random["change"].between(0.98, 1.05).all()
    diff = plotting.ablation_changes(ablation_table(), change="difference")
    assert (diff.loc[diff["control"] == "real", "change"] > 0).all()


def test_finetune_gains_are_signed_so_positive_is_better():
    gains = plotting.finetune_gains(finetune_table(), change="difference").set_index(["method", "target_language"])
    assert gains.loc[("full", "de"), "gain_target"] == pytest.approx(0.05)
    assert gains.loc[("full", "de"), "gain_others"] == pytest.approx(-0.025, abs=0.01)
    assert gains.loc[("full", "de"), "n_others"] == 4
    ppl = finetune_table().assign(metric="ppl")
    flipped = plotting.finetune_gains(ppl, change="relative").set_index(["method", "target_language"])
    assert flipped.loc[("full", "de"), "gain_target"] == pytest.approx(-10.0)  # ppl rose by 10%: worse
    with pytest.raises(PlotInputError, match="no 'before' value"):
        plotting.finetune_gains(finetune_table().query("phase == 'after'"))


def _small_grid() -> pd.DataFrame:
    """A baseline, one real set and three random seeds on two languages; fr's real change has an interval
    that excludes 1, de's covers it, as does every random control's interval over seeds."""
    keys = {"detector": "plnd", "set_kind": "specific", "target_language": "fr", "condition": "all", "metric": "acc"}
    rows = [{**keys, "condition": "none", "control": "real", "seed": -1, "eval_language": e, "value": 0.5,
             "ratio_low": 1.0, "ratio_high": 1.0} for e in ("fr", "de")]  # fmt: skip
    rows += [
        {**keys, "control": "real", "seed": -1, "eval_language": "fr", "value": 0.2, "ratio_low": 0.3,
         "ratio_high": 0.5},
        {**keys, "control": "real", "seed": -1, "eval_language": "de", "value": 0.45, "ratio_low": 0.8,
         "ratio_high": 1.1},
    ]  # fmt: skip
    rows += [{**keys, "control": "random", "seed": s, "eval_language": e, "value": 0.48, "ratio_low": 0.9,
              "ratio_high": 1.02, "seeds_ratio_low": 0.92, "seeds_ratio_high": 1.01} for s in range(3)
             for e in ("fr", "de")]  # fmt: skip
    return pd.DataFrame(rows)


def test_ablation_changes_carry_the_interval_and_whether_it_excludes_no_change():
    changes = plotting.ablation_changes(_small_grid()).set_index(["control", "eval_language"])
    assert changes.loc[("real", "fr"), ["ratio_low", "ratio_high", "significant"]].tolist() == [0.3, 0.5, 1.0]
    assert changes.loc[("real", "de"), "significant"] == 0.0
    # random controls: the interval of the seeds' mean, not one seed's
    assert changes.loc[("random", "fr"), ["ratio_low", "ratio_high", "significant"]].tolist() == [0.92, 1.01, 0.0]
    assert changes.loc[("random", "fr"), "n_seeds"] == 3
    no_seed_columns = plotting.ablation_changes(_small_grid().drop(columns=["seeds_ratio_low", "seeds_ratio_high"]))
    assert no_seed_columns.loc[no_seed_columns["control"] == "random", "significant"].isna().all()
    bare = plotting.ablation_changes(ablation_table())
    assert bare["significant"].isna().all(), "without intervals nothing is claimed either way"
    # an accuracy of 0 in some resample of the baseline leaves the ratio without an interval: the difference decides
    undefined = _small_grid().assign(ratio_low=np.nan, ratio_high=np.nan, difference_low=0.01, difference_high=0.2)
    undefined.loc[undefined["eval_language"] == "de", ["difference_low", "difference_high"]] = [-0.1, 0.1]
    decided = plotting.ablation_changes(undefined.drop(columns=["seeds_ratio_low", "seeds_ratio_high"]))
    assert decided.set_index(["control", "eval_language"]).loc["real", "significant"].to_dict() == {"fr": 1, "de": 0}


def _hatched_cells(ax) -> set[tuple[float, float]]:
    return {(p.get_x() + 0.5, p.get_y() + 0.5) for p in ax.patches if p.get_hatch() == "////"}


def test_ablation_figure_greys_out_changes_whose_interval_covers_no_change():
    fig = plotting.ablation_grid_figure(_small_grid(), eval_languages=["fr", "de"])
    real, random = fig.axes[0], fig.axes[1]
    assert _hatched_cells(real) == {(1.0, 0.0)}, "de (column 1) covers 1, fr does not"
    assert _hatched_cells(random) == {(0.0, 0.0), (1.0, 0.0)}
    muted = {(t.get_position(), t.get_color()) for t in real.texts}
    assert ((1, 0), plotting.MUTED_TEXT) in muted and ((0, 0), plotting.MUTED_TEXT) not in muted
    assert "includes no change" in fig._suptitle.get_text()
    assert not _hatched_cells(plotting.ablation_grid_figure(ablation_table()).axes[0])


def test_finetune_figure_draws_the_intervals_and_hollows_gains_that_cover_zero():
    table = finetune_table()
    after = table["phase"] == "after"
    # the target's gain of "full" is certain, that of "LoRA" is not; the others' gains of every method cover 0
    table["ratio_low"] = np.where(after, 0.9, np.nan)
    table["ratio_high"] = np.where(after, 1.02, np.nan)
    target = after & (table["eval_language"] == table["target_language"])
    table.loc[target & (table["method"] == "full"), ["ratio_low", "ratio_high"]] = [1.05, 1.15]
    gains = plotting.finetune_gains(table).set_index(["method", "target_language"])
    row = gains.loc[("full", "de")]
    assert (row["gain_target_low"], row["gain_target_high"]) == pytest.approx((5.0, 15.0))
    assert row["significant_target"] == 1.0 and row["significant_others"] == 0.0
    assert gains.loc[("LoRA", "de"), "significant_target"] == 0.0
    assert (row["gain_others_low"], row["gain_others_high"]) == pytest.approx((-10.0, 2.0))
    fig = plotting.finetune_gains_figure(table[table["method"].isin([None, "full", "LoRA"])])
    on_target = fig.axes[0]
    hollow = [bar for bar in on_target.patches if bar.get_hatch() == "////"]
    full_bars = [bar for bar in on_target.patches if bar.get_hatch() != "////"]
    assert len(hollow) == len(full_bars) == len(LANGUAGES) - 1, "LoRA's bars hollow, full's filled"
    # each error bar spans the gain's interval
    spans = sorted({tuple(np.round(seg[:, 1], 6)) for coll in on_target.collections for seg in coll.get_segments()})
    assert (5.0, 15.0) in spans
