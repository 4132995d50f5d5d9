"""The real-model report: every number of docs/real_model.md, computed from a finished run's outputs.

Usage: python bench/real_model_report.py --configfile configs/gemma-3-270m.yaml [--results results/<run>]
       [--update docs/real_model.md] [--readme README.md] [--resamples 2000]

Reads the run's neuron sets, ablation cells (their per-document tables; every finished cell, checked against
the grid when the grid exists), logit-lens table and,
when present, ``fidelity.parquet`` (bench/real_model_fidelity.py). Prints Markdown; ``--update`` writes
it between the ``<!-- BEGIN generated -->`` and ``<!-- END generated -->`` lines of a document instead;
``--readme`` writes a short per-language table between ``<!-- BEGIN real-model summary -->`` and its END line.

Intervals are 95% percentile bootstraps over documents: each resample draws every language's eval
documents with replacement, and the ablated and baseline perplexities are recomputed on the same
draw (paired), so the ratio, the mean over the other languages and the selectivity share one resample.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from langneurons.evaluation import bootstrap_interval
from langneurons.io import read_parquet

BEGIN, END = "<!-- BEGIN generated -->", "<!-- END generated -->"
README_BEGIN, README_END = "<!-- BEGIN real-model summary -->", "<!-- END real-model summary -->"
SITES = ("ffn", "attn_q", "attn_k", "attn_v")


def _fmt(value: float, digits: int = 2) -> str:
    return "nan" if not np.isfinite(value) else f"{value:.{digits}f}"


def _ci(estimate: float, draws: np.ndarray, digits: int = 2) -> str:
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return f"{_fmt(estimate, digits)} [{_fmt(low, digits)}, {_fmt(high, digits)}]"


def _table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


# ---- neuron counts ---------------------------------------------------------------------------------


def neuron_counts(summary: pd.DataFrame, languages: list[str], set_kinds: list[str]) -> str:
    """From the run's neurons/summary.parquet (n_neurons and percent_of_all per language, kind, layer, site)."""
    out = []
    summary = summary[summary["set_kind"].isin(set_kinds)]
    layers = sorted(summary["layer"].unique())
    by_site = summary.pivot_table(index=["set_kind", "language"], columns="site", values="n_neurons", aggfunc="sum")
    by_site = by_site.reindex(columns=list(SITES), fill_value=0)
    by_site["total"] = by_site.sum(axis=1)
    percent = summary.groupby(["set_kind", "language"])["percent_of_all"].sum()
    by_site["% of all neurons"] = percent.reindex(by_site.index).map(lambda v: f"{v:.2f}")
    for kind in set_kinds:
        part = by_site.loc[kind].reindex(languages).reset_index()
        out += [f"**{kind}**: neurons per language and site (all layers)", "", _table(part), ""]
    for kind in ("specific", "exclusive"):
        if kind not in set_kinds:
            continue
        mine = summary[summary["set_kind"] == kind]
        per_layer = mine.pivot_table(index="layer", columns="language", values="n_neurons", aggfunc="sum")
        per_layer = per_layer.reindex(index=layers, columns=languages, fill_value=0)
        per_layer.insert(0, "layer", per_layer.index)
        out += [f"**{kind}**: neurons per layer and language (all sites)", "", _table(per_layer), ""]
        per_site = mine.pivot_table(index="layer", columns="site", values="n_neurons", aggfunc="sum")
        per_site = per_site.reindex(index=layers, columns=list(SITES), fill_value=0)
        per_site.insert(0, "layer", per_site.index)
        out += [f"**{kind}**: neurons per layer and site (summed over languages)", "", _table(per_site), ""]
    return "\n".join(out)


# ---- ablation ratios with paired bootstraps over documents ----------------------------------------------


def _per_item(cells: Path, condition: str, set_kind: str, target: str, control: str) -> pd.DataFrame:
    detector = "none" if condition == "none" else "plnd"
    path = cells / condition / detector / set_kind / target / f"{control}.items.parquet"
    table = read_parquet(path)
    return table[table["metric"] == "perplexity"]


def _deactivation_cells(cells: Path) -> list[tuple[Path, str, str, str]]:
    """Every finished cell of condition ``all``: (per-item table, set kind, target, control name)."""
    paths = sorted((cells / "all" / "plnd").glob("*/*/*.items.parquet"))
    return [(p, p.parent.parent.name, p.parent.name, p.name.removesuffix(".items.parquet")) for p in paths]


def _log_ppl_draws(items: pd.DataFrame, language: str, draws: np.ndarray) -> tuple[float, np.ndarray]:
    """Token-weighted mean NLL (log perplexity) of a language's documents, and of each resample (rows of ``draws``)."""
    docs = items[items["eval_language"] == language].sort_values("item")
    nll, n = docs["nll"].to_numpy(float), docs["n_tokens"].to_numpy(float)
    return nll.sum() / n.sum(), nll[draws].sum(axis=1) / n[draws].sum(axis=1)


def ablation_summary(results: Path, cells: Path, languages: list[str], resamples: int, seed: int) -> pd.DataFrame:
    """Per set kind, target and control (every finished cell of condition ``all``): ratio on the target,
    mean and max on the others, selectivity; each with its bootstrap draws."""
    baseline = _per_item(cells, "none", "none", "none", "real")
    n_docs = baseline.groupby("eval_language").size()
    rng = np.random.default_rng(seed)
    draws = {lang: rng.integers(0, n_docs[lang], size=(resamples, n_docs[lang])) for lang in languages}
    base = {lang: _log_ppl_draws(baseline, lang, draws[lang]) for lang in languages}
    grid_path = results / "ablation" / "grid.parquet"
    grid = read_parquet(grid_path) if grid_path.exists() and cells == results / "ablation" / "cells" else None
    rows = []
    for path, set_kind, target, name in _deactivation_cells(cells):
        cell = read_parquet(path.with_name(f"{name}.parquet"))
        items = _per_item(cells, "all", set_kind, target, name)
        ratio, ratio_draws = {}, {}
        for lang in languages:
            treated, treated_draws = _log_ppl_draws(items, lang, draws[lang])
            ratio[lang] = float(np.exp(treated - base[lang][0]))
            ratio_draws[lang] = np.exp(treated_draws - base[lang][1])
        if grid is not None:  # the grid's own ratios must be what the per-document tables give back
            mine = grid[(grid["condition"] == "all") & (grid["set_kind"] == set_kind)
                        & (grid["target_language"] == target) & (grid["metric"] == "perplexity")
                        & (grid["control"] == ("real" if name == "real" else "random"))
                        & (grid["seed"] == (-1 if name == "real" else int(name.removeprefix("random"))))]
            expected = mine.set_index("eval_language")["ratio_to_baseline"]
            assert np.allclose([expected[lang] for lang in languages], [ratio[lang] for lang in languages], rtol=1e-6)
        others = [lang for lang in languages if lang != target]
        mean_others = float(np.mean([ratio[lang] for lang in others]))
        mean_draws = np.mean([ratio_draws[lang] for lang in others], axis=0)
        max_lang = max(others, key=lambda lang: ratio[lang])
        rows.append({
            "set_kind": set_kind, "target": target, "control": name,
            "n_neurons": int(cell["n_neurons_deactivated"].iloc[0]),
            "ratio_L": ratio[target], "ratio_L_draws": ratio_draws[target],
            "mean_others": mean_others, "mean_others_draws": mean_draws,
            "max_others": ratio[max_lang], "max_lang": max_lang,
            "selectivity": ratio[target] / mean_others, "selectivity_draws": ratio_draws[target] / mean_draws,
        })  # fmt: skip
    return pd.DataFrame(rows)


def ablation_tables(summary: pd.DataFrame, languages: list[str]) -> str:
    out = []
    for set_kind, part in summary.groupby("set_kind", sort=False):
        real = part[part["control"] == "real"].set_index("target")
        random = part[part["control"] != "real"].groupby("target").first()
        rows = []
        for lang in languages:
            if lang not in real.index:
                continue
            r, c = real.loc[lang], random.loc[lang] if lang in random.index else None
            rows.append({
                "L": lang, "neurons": r["n_neurons"],
                "ratio on L": _ci(r["ratio_L"], r["ratio_L_draws"]),
                "mean on others": _ci(r["mean_others"], r["mean_others_draws"]),
                "max on others": f"{_fmt(r['max_others'])} ({r['max_lang']})",
                "selectivity": _ci(r["selectivity"], r["selectivity_draws"]),
                "random: ratio on L": "" if c is None else _ci(c["ratio_L"], c["ratio_L_draws"]),
                "random: mean on others": "" if c is None else _ci(c["mean_others"], c["mean_others_draws"]),
                "random: selectivity": "" if c is None else _ci(c["selectivity"], c["selectivity_draws"]),
            })  # fmt: skip
        out += [f"**{set_kind}(L) deactivated in every layer**: perplexity ratio to the baseline (95% bootstrap "
                "interval over documents); random = a same-size random set per (layer, site)", "",
                _table(pd.DataFrame(rows)), ""]
    return "\n".join(out)


def ablation_verdicts(summary: pd.DataFrame) -> str:
    out = []
    for set_kind, part in summary.groupby("set_kind", sort=False):
        real = part[part["control"] == "real"].set_index("target")
        random = part[part["control"] != "real"].groupby("target").first()
        both = real.index.intersection(random.index)
        n = len(real)
        above_others = int((real["ratio_L"] > real["max_others"]).sum())
        selective = int((np.array([np.nanpercentile(d, 2.5) for d in real["selectivity_draws"]]) > 1).sum())
        beats_random = int(sum(
            np.nanpercentile(real.loc[lang, "ratio_L_draws"] - random.loc[lang, "ratio_L_draws"], 2.5) > 0
            for lang in both
        ))  # fmt: skip
        out.append(
            f"- {set_kind}: L's own perplexity rises most (above every other language) for {above_others} of {n} "
            f"languages; selectivity > 1 with its interval above 1 for {selective} of {n}; the ratio on L beats the "
            f"same-size random set (paired interval of the difference above 0) for {beats_random} of {len(both)}; "
            f"median selectivity {_fmt(float(real['selectivity'].median()))} against "
            f"{_fmt(float(random['selectivity'].median()))} for the random sets."
        )
    return "\n".join(out)


# ---- generation fidelity ------------------------------------------------------------------------------


def fidelity_table(fidelity: pd.DataFrame, languages: list[str], resamples: int, seed: int) -> str:
    columns = [("none", "none", "as is")]
    for kind in fidelity.loc[fidelity["set_kind"] != "none", "set_kind"].unique():
        columns += [(kind, "real", f"{kind}(L) off"), (kind, "random", f"random, size of {kind}(L), off")]
    rows = []
    for lang in languages:
        row = {"L": lang}
        for kind, control, label in columns:
            hits = fidelity[(fidelity["target_language"] == lang) & (fidelity["set_kind"] == kind)
                            & (fidelity["control"] == control)]["value"].to_numpy(float)
            if len(hits) == 0:
                row[label] = ""
                continue
            interval = bootstrap_interval(hits, n_resamples=resamples, seed=seed)
            row[label] = f"{_fmt(interval.estimate)} [{_fmt(interval.low)}, {_fmt(interval.high)}]"
        rows.append(row)
    n = int(fidelity.groupby(["target_language", "set_kind", "control"]).size().max())
    return "\n".join([
        f"Share of {n} greedy continuations per language identified as L (95% bootstrap interval over prompts)", "",
        _table(pd.DataFrame(rows)), "",
    ])  # fmt: skip


def fidelity_from_cells(cells: Path, languages: list[str]) -> pd.DataFrame:
    """The grid's own generation-fidelity items (metric ``fidelity``), in the layout of fidelity.parquet: per
    prompt of L, whether its greedy continuation is in L, as is and with each set of L (or its control) off."""
    parts = []
    baseline = read_parquet(cells / "none" / "none" / "none" / "none" / "real.items.parquet")
    for lang in languages:
        hits = baseline[(baseline["metric"] == "fidelity") & (baseline["eval_language"] == lang)]
        parts.append(pd.DataFrame({"target_language": lang, "set_kind": "none", "control": "none",
                                   "value": hits["value"].to_numpy(float)}))  # fmt: skip
    for path, set_kind, target, name in _deactivation_cells(cells):
        items = read_parquet(path)
        hits = items[(items["metric"] == "fidelity") & (items["eval_language"] == target)]
        parts.append(pd.DataFrame({"target_language": target, "set_kind": set_kind,
                                   "control": "real" if name == "real" else "random",
                                   "value": hits["value"].to_numpy(float)}))  # fmt: skip
    table = pd.concat(parts, ignore_index=True)
    return table[table["value"].notna()]


# ---- logit lens -----------------------------------------------------------------------------------


def logit_lens_table(lens: pd.DataFrame, stages: dict) -> tuple[str, str]:
    """Per layer, the mean shares over the non-English languages; the verdict on the task (middle) layers,
    those between the first ``stages["understanding"]`` and the last ``stages["generation"]``."""
    lens = lens[lens["condition"] == "none"]
    shares = lens.pivot_table(index=["language", "layer"], columns="category", values="share").reset_index()
    non_en = shares[shares["language"] != "en"]
    mean = non_en.groupby("layer")[["en", "target", "other"]].mean()
    per_language_en = non_en.pivot(index="layer", columns="language", values="en")
    per_language_target = non_en.pivot(index="layer", columns="language", values="target")
    rows = []
    for layer in mean.index:
        rows.append({
            "layer": layer, "English (mean of L != en)": _fmt(mean.loc[layer, "en"], 3),
            "target L (mean)": _fmt(mean.loc[layer, "target"], 3), "other": _fmt(mean.loc[layer, "other"], 3),
            "languages with English > L": int((per_language_en.loc[layer] > per_language_target.loc[layer]).sum()),
        })  # fmt: skip
    n_layers = int(mean.index.max()) + 1
    first, last = stages["understanding"], n_layers - stages["generation"] - 1
    middle = mean.loc[first:last]
    peak = int(middle["en"].idxmax())
    en_over = int((middle["en"] > middle["target"]).sum())
    verdict = (
        f"Task (middle) layers {first} to {last}: the English share peaks at layer {peak} "
        f"({_fmt(middle.loc[peak, 'en'], 3)} of the top-10 tokens, against {_fmt(middle.loc[peak, 'target'], 3)} "
        f"for the input's language); English outweighs the input's language in {en_over} of {len(middle)} middle "
        f"layers (mean over the {per_language_en.shape[1]} non-English languages); at the last layer the shares "
        f"are {_fmt(mean.loc[n_layers - 1, 'en'], 3)} English and {_fmt(mean.loc[n_layers - 1, 'target'], 3)} input "
        "language."
    )
    return _table(pd.DataFrame(rows)), verdict


def readme_summary(summary: pd.DataFrame, counts: pd.DataFrame, languages: list[str]) -> str:
    """The README's short table: per language, specific(L)'s size and its ablation beside the random set."""
    specific = summary[summary["set_kind"] == "specific"]
    real = specific[specific["control"] == "real"].set_index("target")
    random = specific[specific["control"] != "real"].groupby("target").first()
    percent = counts[counts["set_kind"] == "specific"].groupby("language")["percent_of_all"].sum()
    rows = []
    for lang in languages:
        if lang not in real.index:
            rows.append({"L": lang, "specific(L), % of neurons": _fmt(percent.get(lang, np.nan)),
                         "ppl ratio on L": "not run", "mean on others": "", "random set, on L": ""})
            continue
        rows.append({
            "L": lang, "specific(L), % of neurons": _fmt(percent.get(lang, np.nan)),
            "ppl ratio on L": _fmt(real.loc[lang, "ratio_L"]), "mean on others": _fmt(real.loc[lang, "mean_others"]),
            "random set, on L": _fmt(random.loc[lang, "ratio_L"]) if lang in random.index else "",
        })  # fmt: skip
    return _table(pd.DataFrame(rows))


def replace_block(path: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Write ``text`` between the ``begin`` and ``end`` lines of the file ``path``."""
    document = path.read_text()
    if begin not in document or end not in document:
        raise SystemExit(f"{path} lacks the {begin} / {end} lines that mark the generated block")
    head, rest = document.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, required=True)
    parser.add_argument("--results", type=Path)
    parser.add_argument("--cells", type=Path, help="the ablation cells (default <results>/ablation/cells)")
    parser.add_argument("--update", type=Path, help="a Markdown file whose generated block is replaced")
    parser.add_argument("--readme", type=Path, help="also write the short summary table into this file's block")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = yaml.safe_load(args.configfile.read_text())
    results = args.results or Path("results") / config["run"]
    languages = list(config["languages"])
    summary_counts = read_parquet(results / "neurons" / "summary.parquet")
    # the lens' per-language tables of the plain model (condition none): every language that finished
    lens_paths = sorted((results / "logit_lens" / "none").glob("*.parquet"))
    lens = pd.concat([read_parquet(path) for path in lens_paths], ignore_index=True) if lens_paths else None
    set_kinds = [k for k in config["selection"]["set_kinds"] if k in set(summary_counts["set_kind"])]

    order = {kind: position for position, kind in enumerate(set_kinds)}
    cells = args.cells or results / "ablation" / "cells"
    summary = ablation_summary(results, cells, languages, args.resamples, args.seed)
    summary = summary.sort_values("set_kind", key=lambda kinds: kinds.map(order), kind="stable")
    sections = [
        f"Run `{config['run']}`: {len(languages)} languages, "
        f"{config['corpus']['split_sizes']['detect']} detection and {config['evaluation']['n_docs']} evaluation "
        f"documents per language, scoring {config['scoring']['max_length']} and evaluating "
        f"{config['evaluation']['max_length']} tokens per document; top-k {config['selection']['top_k']}, "
        f"rho {config['selection']['rho']}; {args.resamples} bootstrap resamples.",
        "", "### Neuron counts", "", neuron_counts(summary_counts, languages, set_kinds),
        "### Deactivating a language's neurons", "",
        f"{len(summary)} ablation cells (set kind x target x real/random) found under `{cells}`.", "",
        ablation_tables(summary, languages),
        "In short:", "", ablation_verdicts(summary), "",
    ]
    fidelity_path = results / "fidelity.parquet"
    fidelity = read_parquet(fidelity_path) if fidelity_path.exists() else fidelity_from_cells(cells, languages)
    if len(fidelity):
        sections += ["### Generation fidelity", "",
                     fidelity_table(fidelity, languages, args.resamples, args.seed)]
    sections += ["### Logit lens: the share of English, input-language and other tokens among each layer's top 10", ""]
    if lens is None:
        sections += ["Not run (the run's logit lens has not finished).", ""]
    else:
        lens_table, lens_verdict = logit_lens_table(lens, config["stages"])
        done = sorted(set(lens["language"]))
        sections += [f"Languages: {', '.join(done)}.", "", lens_table, "", lens_verdict, ""]
    text = "\n".join(sections)
    if args.update:
        replace_block(args.update, text)
    else:
        print(text)
    if args.readme:
        replace_block(args.readme, readme_summary(summary, summary_counts, languages), README_BEGIN, README_END)


if __name__ == "__main__":
    main()
