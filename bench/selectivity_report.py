"""docs/selectivity.md from a run's selectivity sweep and a fine-tuning sweep: tables, the frontier figure, verdicts.

    python bench/selectivity_report.py --model demo=results/demo --finetune demo=results/demo/finetune_sweep \\
        --out docs/selectivity.md

Each ``--model NAME=RUN`` reads ``RUN/selectivity/table.parquet`` and ``best.parquet`` (the workflow's sweep)
and copies ``RUN/figures/selectivity_frontier.png`` beside the document; each ``--finetune NAME=DIR`` reads
``DIR/summary.parquet`` and ``DIR/settings.json`` (bench/finetune_sweep.py). ``--notes FILE`` adds a
hand-written section (the reading of the numbers) after the generated ones.

``--from-cells`` summarises every cell found under ``RUN/selectivity/cells`` instead (the workflow's
table step and figure on whatever grid was measured, e.g. extra rules run for one method only), into
``RUN/selectivity/all_cells/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from langneurons.io import atomic_path, read_parquet

#: The released code's (and the paper's) rule and the workflow's default top-k: the baseline every rule is read against.
PAPER_RULE = ("paper", "0.25", "specific")


def _fmt(value: float, digits: int = 2) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _interval(row: pd.Series, name: str, digits: int = 2) -> str:
    return f"{_fmt(row[name], digits)} [{_fmt(row[f'{name}_low'], digits)}, {_fmt(row[f'{name}_high'], digits)}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _rule(row: pd.Series) -> str:
    return f"{row['set_kind']} ({row['method']}, top-k {row['top_k']})"


def best_section(best: pd.DataFrame, goal: dict) -> str:
    rows = []
    for _, row in best.iterrows():
        met = "yes" if row["meets_goal"] else f"no ({int(row['n_criteria'])}/3 criteria)"
        rows.append([row["target_language"], _rule(row), _fmt(row["ratio_on_target"]), _fmt(row["mean_ratio_others"]),
                     _fmt(row["selectivity"]), _fmt(row["random_ratio"], 3), met])  # fmt: skip
    header = ["language", "best rule (method, top-k)", "ratio on L", "mean ratio others", "selectivity",
              "random ratio on L", "goal met"]  # fmt: skip
    note = (
        f"Goal: ratio on L >= {goal['ratio_on_target']}, selectivity >= {goal['selectivity']}, random control "
        f"<= {goal['random_ratio']} (on the estimates). Per language the best rule meets the most criteria, then "
        "has the highest selectivity; the `all` row is the rule with the most languages meeting the goal (then "
        "the most criteria met by its worst language, then the geometric-mean selectivity), with geometric means "
        "over the languages (random ratio: the worst language)."
    )
    return note + "\n\n" + markdown_table(header, rows)


def rule_grid(table: pd.DataFrame) -> str:
    """Every rule: per language 'ratio on L / selectivity', with set sizes."""
    languages = sorted(table["target_language"].unique())
    rows = []
    for (method, top_k, kind), group in table.groupby(["method", "top_k", "set_kind"], sort=True):
        by = group.set_index("target_language")
        cells = [
            f"{_fmt(by.loc[lang, 'ratio_on_target'])} / {_fmt(by.loc[lang, 'selectivity'])} "
            f"({int(by.loc[lang, 'n_neurons'])})"
            if lang in by.index
            else "–"
            for lang in languages
        ]
        meeting = int(group["meets_goal"].sum())
        rows.append([method, top_k, kind, *cells, _fmt(group["random_ratio"].max(), 3), f"{meeting}/{len(group)}"])
    header = ["method", "top-k", "rule", *languages, "max random ratio", "languages meeting goal"]
    return (
        "Each cell: perplexity ratio on the set's own language / selectivity (set size in neurons).\n\n"
        + markdown_table(header, rows)
    )


def paper_rule_detail(table: pd.DataFrame) -> str:
    method, top_k, kind = PAPER_RULE
    rows = table[(table["method"] == method) & (table["top_k"] == top_k) & (table["set_kind"] == kind)]
    if rows.empty:
        return ""
    lines = []
    for _, row in rows.iterrows():
        worst = f"{_fmt(row['max_ratio_others'])} ({row['worst_other_language']})"
        lines.append([row["target_language"], int(row["n_neurons"]), _interval(row, "ratio_on_target"),
                      _interval(row, "mean_ratio_others"), worst, _interval(row, "selectivity"),
                      _interval(row, "random_ratio", 3)])  # fmt: skip
    header = ["language", "neurons", "ratio on L [95% CI]", "mean ratio others", "max ratio others (language)",
              "selectivity", "random ratio on L"]  # fmt: skip
    return (
        f"The paper's rule ({kind}, {method} scoring, top-k {top_k}), with bootstrap intervals over the eval "
        "documents:\n\n" + markdown_table(header, lines)
    )


def finetune_section(summary: pd.DataFrame, settings: dict) -> str:
    args = settings["args"]
    intro = (
        f"Fine-tuning on {args['n_docs']} `finetune` documents of the target (max {args['max_length']} tokens, "
        f"batch {args['batch_size']}, 1 epoch, cosine schedule, AdamW), perplexity on {args['eval_docs']} eval "
        f"documents per language; seeds {args['seeds']} (document order, the random subset, LoRA's "
        f"initialisation); sets at rho {args['rho']}. Gain on L = perplexity decrease in percent (mean, "
        "[min, max] over the seeds); worst other = the other language whose mean change is largest in "
        "magnitude (+ = worse), most harmed = the largest increase. Goal: targeted gain > random subset's gain "
        "(same rule, lr) and every other language's mean change within ±2%; the goal column also says whether "
        "targeted beats random (mean), on every seed (worst targeted seed > best random seed), and the one-sided "
        "goal (no other language worse by more than 2%, improvements allowed)."
    )
    rows = []
    for _, row in summary.sort_values(["target_language", "lr", "method", "set_kind"]).iterrows():
        rows.append([
            row["target_language"], f"{row['lr']:g}", row["method"], row["set_kind"] or "–", int(row["n_trainable"]),
            f"{_fmt(row['gain_target'], 1)} [{_fmt(row['gain_target_min'], 1)}, {_fmt(row['gain_target_max'], 1)}]",
            f"{row['worst_other']} {_fmt(row['worst_other_change'], 1)} "
            f"[{_fmt(row['worst_other_change_min'], 1)}, {_fmt(row['worst_other_change_max'], 1)}]",
            f"{row['max_other_harm_language']} {_fmt(row['max_other_harm'], 1)}",
            _fmt(row["mean_other_change"], 1), "yes" if row["others_within"] else "no",
            _goal_cell(row),
        ])  # fmt: skip
    header = ["target", "lr", "method", "rule", "trainable", "gain on L %", "largest other change % [min, max]",
              "most harmed other %", "mean other %", "others within ±2%", "goal (beats random / every seed / "
              "one-sided)"]  # fmt: skip
    return intro + "\n\n" + markdown_table(header, rows)


def _goal_cell(row: pd.Series) -> str:
    if row["method"] != "targeted":
        return ""
    flags = [row["goal"], row["beats_random"], row["beats_random_every_seed"], row["goal_one_sided"]]
    return " / ".join(["yes" if flags[0] else "no", *("y" if flag else "n" for flag in flags[1:])])


def finetune_verdict(summary: pd.DataFrame) -> str:
    targeted = summary[summary["method"] == "targeted"]
    hits = targeted[targeted["goal"]]
    if len(hits):
        found = "; ".join(f"{r.target_language}: {r.set_kind} at lr {r.lr:g} (gain {r.gain_target:.2f}% vs random "
                          f"{r.random_gain_target:.2f}%, worst other {r.worst_other} {r.worst_other_change:+.1f}%)"
                          for r in hits.itertuples())  # fmt: skip
        return f"Settings that meet the goal: {found}."
    return "No targeted setting meets the goal."


def _languages(rows: pd.DataFrame) -> str:
    return ", ".join(rows["target_language"]) if len(rows) else "none"


def claims_section(table: pd.DataFrame, goal: dict) -> str:
    """The paper's ablation claims, checked on its own rule and on the best rule of the sweep."""
    method, top_k, kind = PAPER_RULE
    paper = table[(table["method"] == method) & (table["top_k"] == top_k) & (table["set_kind"] == kind)]
    lines = []
    if len(paper):
        hurt = paper[paper["ratio_on_target"] >= goal["ratio_on_target"]]
        selective = paper[paper["selectivity"] >= goal["selectivity"]]
        quiet = paper[paper["random_ratio"] <= goal["random_ratio"]]
        worse_elsewhere = paper[paper["max_ratio_others"] > paper["ratio_on_target"]]
        lines += [
            f"- *Deactivating a language's specific neurons hurts that language* (ratio on L >= "
            f"{goal['ratio_on_target']}): holds for {len(hurt)} of {len(paper)} languages ({_languages(hurt)}).",
            f"- *... and leaves the others largely intact* (selectivity >= {goal['selectivity']}): holds for "
            f"{len(selective)} of {len(paper)} ({_languages(selective)}); another language is hurt more than L "
            f"itself for {len(worse_elsewhere)} ({_languages(worse_elsewhere)}).",
            f"- *Random neurons of the same count do little* (random ratio on L <= {goal['random_ratio']}): holds "
            f"for {len(quiet)} of {len(paper)} (largest random ratio on any language: "
            f"{_fmt(paper['random_max_ratio'].max(), 3)}).",
        ]
    met = criteria_met_counts(table)
    lines.append(
        "- Rules meeting the whole goal, per language: "
        + "; ".join(f"{lang}: {', '.join(rules) if rules else 'none'}" for lang, rules in met.items())
        + "."
    )
    return "\n".join(lines)


def criteria_met_counts(table: pd.DataFrame) -> dict[str, list[str]]:
    """Per target language, the (method, top-k, rule) that meet the whole goal."""
    return {
        lang: [_rule(row) for _, row in rows[rows["meets_goal"]].iterrows()]
        for lang, rows in table.groupby("target_language", sort=True)
    }


def summarise_cells(run: Path, goal: dict, n_resamples: int, seed: int) -> tuple[Path, Path]:
    """The workflow's table step and frontier figure on every cell under ``run/selectivity/cells``."""
    from langneurons.plotting import plot_selectivity_frontier
    from langneurons.steps.selectivity import selectivity_table_step

    out = run / "selectivity" / "all_cells"
    out.mkdir(parents=True, exist_ok=True)
    cells = sorted(str(path) for path in (run / "selectivity" / "cells").glob("*/*/*.parquet"))
    settings = {"n_resamples": n_resamples, "confidence": 0.95, "goal": goal}
    selectivity_table_step(cells, settings, seed, str(out / "table.parquet"), str(out / "best.parquet"))
    plot_selectivity_frontier(read_parquet(out / "table.parquet"), out / "selectivity_frontier.png", goal=goal)
    return out, out / "selectivity_frontier.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="NAME=RUN (a results/<run> folder)")
    parser.add_argument("--finetune", action="append", default=[], help="NAME=DIR (bench/finetune_sweep.py --out)")
    parser.add_argument("--goal", default='{"ratio_on_target": 1.2, "selectivity": 1.5, "random_ratio": 1.05}')
    parser.add_argument("--notes", type=Path, help="a markdown file appended as the reading of the numbers")
    parser.add_argument("--out", type=Path, default=Path("docs/selectivity.md"))
    parser.add_argument("--from-cells", action="store_true", help="summarise every measured cell of each run")
    parser.add_argument("--n-resamples", type=int, default=1000, help="with --from-cells")
    parser.add_argument("--seed", type=int, default=0, help="with --from-cells: the bootstrap seed")
    args = parser.parse_args()
    goal = json.loads(args.goal)
    parts = [
        "# Which neurons are one language's? The selectivity sweep and fine-tuning that spares the others",
        "",
        "Generated by `bench/selectivity_report.py` from the workflow's selectivity sweep "
        "(`rules/selectivity.smk`, `langneurons/steps/selectivity.py`) and `bench/finetune_sweep.py`; "
        "do not edit by hand.",
    ]
    for spec in args.model:
        name, run = spec.split("=", 1)
        tables = Path(run) / "selectivity"
        source_figure = Path(run) / "figures" / "selectivity_frontier.png"
        if args.from_cells:
            tables, source_figure = summarise_cells(Path(run), goal, args.n_resamples, args.seed)
        table, best = read_parquet(tables / "table.parquet"), read_parquet(tables / "best.parquet")
        figure = args.out.parent / f"selectivity_frontier_{name}.png"
        figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_figure, figure)
        parts += [
            f"\n## Selectivity sweep: {name}\n",
            f"{table['n_docs'].iloc[0]} eval documents per language, {int(table['n_control_seeds'].max())} random "
            f"control seed(s) per set, {len(table)} (method, top-k, rule, language) rows.\n",
            "### The paper's claims, checked\n", claims_section(table, goal),
            "\n### Best rule per language and overall\n", best_section(best, goal),
            "\n### The paper's rule\n", paper_rule_detail(table),
            "\n### Every rule\n", rule_grid(table),
            f"\n### Frontier\n\n![selectivity frontier, {name}]({figure.name})\n",
        ]  # fmt: skip
    for spec in args.finetune:
        name, folder = spec.split("=", 1)
        summary = read_parquet(Path(folder) / "summary.parquet")
        settings = json.loads((Path(folder) / "settings.json").read_text())
        parts += [f"\n## Fine-tuning sweep: {name}\n", finetune_section(summary, settings), "",
                  finetune_verdict(summary)]  # fmt: skip
    if args.notes:
        parts += ["", args.notes.read_text().strip()]
    with atomic_path(args.out) as tmp:
        tmp.write_text("\n".join(parts) + "\n", encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
