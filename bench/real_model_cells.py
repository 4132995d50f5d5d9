"""Ablation cells of a run in one process: the model loaded once, then every (set kind, target, control) cell.

Usage: python bench/real_model_cells.py --configfile configs/gemma-3-270m.yaml --model /path/to/model
       [--results results/<run>] [--out <results>/ablation-onepass] [--set-kinds specific exclusive]

The workflow runs each cell as its own job, which on a small CPU spends as long starting Python and
loading the model as evaluating. This driver evaluates the same cells (condition ``all``, the
config's ablation set kinds, targets and control seeds, its evaluation settings) with the
workflow's own step functions (``langneurons.steps.ablation.cell_neurons`` and
``evaluate_languages``), and writes them in the workflow's layout under ``--out``
(``cells/<condition>/<detector>/<set_kind>/<target>/<control>.parquet`` and ``.items.parquet``,
the baseline as ``cells/none/none/none/none/real``), which bench/real_model_report.py reads.
Cells already written are kept, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
import yaml

from langneurons import corpora
from langneurons.architectures import dimensions, site_sizes
from langneurons.conditions import layer_stages
from langneurons.interventions import deactivate
from langneurons.io import read_parquet, write_parquet_atomic
from langneurons.steps.ablation import GRID_COLUMNS, cell_neurons, evaluate_languages
from langneurons.steps.common import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, required=True)
    parser.add_argument("--model", required=True, help="the run's model (folder or hub id)")
    parser.add_argument("--results", type=Path, help="the run's results folder (default results/<run>)")
    parser.add_argument("--out", type=Path, help="default <results>/ablation-onepass")
    parser.add_argument("--set-kinds", nargs="+", help="default: the config's ablation.set_kinds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.configfile.read_text())
    languages = list(config["languages"])
    results = args.results or Path("results") / config["run"]
    out = args.out or results / "ablation-onepass"
    ablation, evaluation = config["ablation"], config["evaluation"]
    settings = {**evaluation, **config["execution"]["evaluation"], "seed": config["seed"]}
    model, tokenizer = load_model(args.model, dtype=config["model"]["dtype"])
    n_layers = dimensions(model).n_layers
    stages = layer_stages(n_layers, **config["stages"])
    neurons = read_parquet(results / "neurons" / "neurons.parquet")
    eval_docs = {
        lang: corpora.read_corpus(results / "corpus" / f"{lang}.parquet", "eval").sort_values("doc_id")
        .head(evaluation["n_docs"])
        for lang in languages
    }  # fmt: skip

    cells = [("none", "none", "none", "none", None)]
    for set_kind in args.set_kinds or ablation["set_kinds"]:
        for target in ablation["targets"] or languages:
            for control in [None, *ablation["control_seeds"]]:
                cells.append(("all", "plnd", set_kind, target, control))
    for condition, detector, set_kind, target, control in cells:
        name = "real" if control is None else f"random{control}"
        path = out / "cells" / condition / detector / set_kind / target / f"{name}.parquet"
        if path.exists() and path.with_name(f"{name}.items.parquet").exists():
            continue
        chosen = pd.DataFrame(columns=["layer", "site", "index"])
        if condition != "none":
            chosen = cell_neurons(neurons, target, set_kind, condition, stages, site_sizes(model), control)
        with deactivate(model, chosen):
            rows, per_item = evaluate_languages(model, tokenizer, eval_docs, evaluation["metrics"], settings)
        table = pd.DataFrame(rows).assign(
            condition=condition, detector=detector, set_kind=set_kind, target_language=target,
            control="real" if control is None else "random", seed=-1 if control is None else int(control),
            n_neurons_deactivated=len(chosen),
        )  # fmt: skip
        write_parquet_atomic(per_item, path.with_name(f"{name}.items.parquet"))
        write_parquet_atomic(table[list(GRID_COLUMNS)], path)
        print(f"{condition}/{set_kind}/{target}/{name}: {len(chosen)} neurons", flush=True)


if __name__ == "__main__":
    main()
