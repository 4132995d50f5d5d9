"""Generation language fidelity of a finished run's model, with each language's neurons deactivated.

Usage: python bench/real_model_fidelity.py --configfile configs/gemma-3-270m.yaml --model /path/to/model
       [--results results/<run>] [--prompt-tokens 32] [--new-tokens 24] [--control-seed 0]

For every language L of the run: greedy continuations of the first ``--prompt-tokens`` tokens of L's
eval documents (the ablation grid's documents, first by doc_id), classified by py3langid among the
run's languages; the share still in L as is, with set_kind(L) deactivated in every layer, and with a
random set of the same size per (layer, site) deactivated (``NeuronSet.random_control``).
Writes ``<results>/fidelity.parquet``: one row per (set_kind, target, control, item) with the
generated text and its label.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd
import torch
import yaml

from langneurons import corpora, evaluation
from langneurons.architectures import dimensions, site_sizes
from langneurons.interventions import deactivate
from langneurons.io import read_parquet, write_parquet_atomic
from langneurons.neuronset import NeuronSet, NeuronSpace
from langneurons.selection import language_set
from langneurons.steps.common import load_model


def fidelity_rows(model, tokenizer, docs: pd.DataFrame, language: str, languages: list[str], args) -> pd.DataFrame:
    result = evaluation.evaluate(
        model, tokenizer, "fidelity", docs, language, languages=languages, split="eval", limit=args.n_prompts,
        prompt_tokens=args.prompt_tokens, max_new_tokens=args.new_tokens, batch_size=args.batch_size,
        progress=False,
    )
    texts = pd.DataFrame(result["details"])[["item", "prompt", "text"]]
    return result["per_item"].merge(texts, on="item")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, required=True)
    parser.add_argument("--model", required=True, help="the run's model (folder or hub id)")
    parser.add_argument("--results", type=Path, help="the run's results folder (default results/<run>)")
    parser.add_argument("--set-kinds", nargs="+", default=["specific", "exclusive"])
    parser.add_argument("--n-prompts", type=int, default=None, help="default: evaluation.n_docs of the config")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--control-seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.configfile.read_text())
    languages = list(config["languages"])
    args.n_prompts = args.n_prompts or config["evaluation"]["n_docs"]
    results = args.results or Path("results") / config["run"]
    neurons = read_parquet(results / "neurons" / "neurons.parquet")
    model, tokenizer = load_model(args.model, dtype=config["model"]["dtype"])
    sizes, n_layers = site_sizes(model), dimensions(model).n_layers

    frames = []
    for language in languages:
        docs = corpora.read_corpus(results / "corpus" / f"{language}.parquet", "eval").sort_values("doc_id")
        frames.append(fidelity_rows(model, tokenizer, docs, language, languages, args).assign(
            set_kind="none", target_language=language, control="none", n_neurons_deactivated=0))
        for set_kind in args.set_kinds:
            chosen = language_set(neurons, language, set_kind)
            arms = {"real": chosen}
            if not chosen.empty:
                arms["random"] = NeuronSet(chosen, NeuronSpace(n_layers, sizes)).random_control(args.control_seed).table
            for control, deactivated in arms.items():
                with deactivate(model, deactivated):
                    rows = fidelity_rows(model, tokenizer, docs, language, languages, args)
                frames.append(rows.assign(set_kind=set_kind, target_language=language, control=control,
                                          n_neurons_deactivated=len(deactivated)))
        print(f"{language}: done", flush=True)
    table = pd.concat(frames, ignore_index=True)
    table.attrs["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {
        "results": str(results), "load_average": os.getloadavg()[0]}
    write_parquet_atomic(table, results / "fidelity.parquet")
    print(table.groupby(["set_kind", "control", "target_language"])["value"].mean().unstack().round(2))


if __name__ == "__main__":
    main()
