"""Fine-tuning sweep: learning rate x set rule x method x seed, on one language, every language evaluated.

Does updating only a language's neurons improve that language more than a random subset of the same size,
while every other language stays within +-2% perplexity? For each target language, learning rate, seed and
method (``targeted`` on each set rule's neurons, ``random`` = a same-size random subset per layer and site
drawn with the seed, ``full``, ``lora``), a fresh copy of the model is fine-tuned on the target's ``finetune``
documents (langneurons.finetuning, the workflow's trainer) and the perplexity of every language's eval
documents is measured before and after. The seed sets the document order (and LoRA's initialisation, and the
random subset), so the spread over seeds is the run-to-run variation.

Writes ``<out>/runs.parquet`` (one row per run and eval language; written after every run, and a rerun skips
the runs already there) and ``<out>/summary.parquet`` (per target, method, set rule, lr: the gain on the
target and the change on every other language, mean and min/max over the seeds, and whether the goal holds).

    python bench/finetune_sweep.py results/demo --out results/demo/finetune_sweep \\
        --targets fr sw --lrs 1e-4 3e-4 1e-3 --set-kinds specific shared_by_at_most-2 --seeds 0 1 2

It is a script, not a workflow stage: it is an experiment that chooses fine-tuning settings (hundreds of
short runs of one model held in memory), not a product of the pipeline; the workflow's fine-tuning grid
then runs the chosen setting.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from langneurons import corpora, finetuning
from langneurons.evaluation import perplexity
from langneurons.io import read_parquet, write_json_atomic, write_parquet_atomic
from langneurons.selection import ActivationCounts, language_set, neuron_sets
from langneurons.steps.common import load_model

RUN_KEYS = ("target_language", "method", "set_kind", "lr", "seed")
#: Every other language's mean change over the seeds must lie within this (percent) for the goal.
OTHERS_TOLERANCE_PCT = 2.0


def evaluate(model, tokenizer, eval_docs: Mapping[str, list[str]], max_length: int, batch_size: int) -> dict:
    """Perplexity of every language's eval documents."""
    return {
        lang: perplexity(model, tokenizer, texts, max_length=max_length, batch_size=batch_size, progress=False)
        .perplexity
        for lang, texts in eval_docs.items()
    }  # fmt: skip


def run_rows(key: Mapping, before: Mapping[str, float], after: Mapping[str, float], extra: Mapping) -> list[dict]:
    """One row per eval language: perplexity before and after, and the change in percent (negative = better)."""
    return [
        {**key, **extra, "eval_language": lang, "before": before[lang], "after": after[lang],
         "change_pct": 100.0 * (after[lang] / before[lang] - 1.0)}
        for lang in before
    ]  # fmt: skip


def summarise(runs: pd.DataFrame, tolerance_pct: float = OTHERS_TOLERANCE_PCT) -> pd.DataFrame:
    """Per (target, method, set rule, lr): gain on the target and change on each other language over the seeds.

    ``gain_target`` = minus the target's change (percent; positive = better), with ``_min`` / ``_max`` over
    the seeds; ``worst_other`` / ``worst_other_change`` = the other language whose mean change is largest in
    magnitude, ``max_other_harm`` the largest (+ = worse); ``others_within`` = every other language's mean
    change within +-``tolerance_pct``, ``others_not_harmed`` = none worse by more than it; ``beats_random``
    (targeted rows) = a larger mean gain than the random subset of the same rule and lr,
    ``beats_random_every_seed`` = the smallest gain over the seeds above the random subset's largest;
    ``goal`` = beats_random and others_within (``goal_one_sided``: and others_not_harmed).
    """
    groups = ["target_language", "method", "set_kind", "lr"]
    rows = []
    for key, group in runs.groupby(groups, sort=True, dropna=False):
        target = key[0]
        own = group[group["eval_language"] == target]
        gains = -own["change_pct"].to_numpy()
        others = group[group["eval_language"] != target].groupby("eval_language")["change_pct"]
        mean_change = others.mean()
        worst = mean_change.abs().idxmax()
        row = dict(zip(groups, key))
        row |= {
            "n_seeds": own["seed"].nunique(),
            "n_trainable": int(group["trainable_params"].iloc[0]),
            "gain_target": gains.mean(), "gain_target_min": gains.min(), "gain_target_max": gains.max(),
            "gain_target_sd": gains.std(ddof=1) if len(gains) > 1 else np.nan,
            "worst_other": worst, "worst_other_change": mean_change[worst],
            "worst_other_change_min": others.min()[worst], "worst_other_change_max": others.max()[worst],
            "mean_other_change": mean_change.mean(),
            "max_other_harm": mean_change.max(), "max_other_harm_language": mean_change.idxmax(),
            "others_within": bool((mean_change.abs() <= tolerance_pct).all()),
            "others_not_harmed": bool((mean_change <= tolerance_pct).all()),
        }  # fmt: skip
        row |= {f"change_{lang}": value for lang, value in mean_change.items()}
        rows.append(row)
    table = pd.DataFrame(rows)
    random = table[table["method"] == "random"].set_index(["target_language", "set_kind", "lr"])["gain_target"]
    keys = pd.MultiIndex.from_frame(table[["target_language", "set_kind", "lr"]])
    table["random_gain_target"] = random.reindex(keys).to_numpy()
    random_max = table[table["method"] == "random"].set_index(["target_language", "set_kind", "lr"])["gain_target_max"]
    table["random_gain_target_max"] = random_max.reindex(keys).to_numpy()
    targeted = table["method"] == "targeted"
    table["beats_random"] = targeted & (table["gain_target"] > table["random_gain_target"])
    table["beats_random_every_seed"] = targeted & (table["gain_target_min"] > table["random_gain_target_max"])
    table["goal"] = table["beats_random"] & table["others_within"]
    table["goal_one_sided"] = table["beats_random"] & table["others_not_harmed"]
    return table


def sets_from_counts(counts_dir: Path, languages: Sequence[str], rho: float, kinds: Sequence[str]) -> pd.DataFrame:
    per_language = {lang: ActivationCounts.load(counts_dir / f"{lang}.safetensors") for lang in languages}
    return neuron_sets(per_language, rho, kinds)


def planned_runs(args) -> list[dict]:
    runs = []
    for target in args.targets:
        for lr in args.lrs:
            for seed in args.seeds:
                for method in args.methods:
                    kinds = args.set_kinds if method in ("targeted", "random") else [""]
                    runs += [dict(target_language=target, method=method, set_kind=k, lr=lr, seed=seed) for k in kinds]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a workflow run's results folder (corpus/, counts/, model/)")
    parser.add_argument("--model", help="model folder or hub id (default: <run>/model, the demo model)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--languages", nargs="+", help="default: every language with a corpus in the run")
    parser.add_argument("--targets", nargs="+", required=True)
    parser.add_argument("--lrs", type=float, nargs="+", required=True)
    parser.add_argument("--set-kinds", nargs="+", default=["specific"])
    parser.add_argument("--methods", nargs="+", default=["targeted", "random", "full", "lora"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rho", type=float, default=0.9)
    parser.add_argument("--n-docs", type=int, default=400, help="fine-tuning documents (paper: 400)")
    parser.add_argument("--eval-docs", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--summarise-only", action="store_true", help="only rewrite summary.parquet from runs.parquet")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.summarise_only:
        write_parquet_atomic(summarise(read_parquet(args.out / "runs.parquet")), args.out / "summary.parquet")
        return

    languages = args.languages or sorted(path.stem for path in (args.run / "corpus").glob("*.parquet"))
    model, tokenizer = load_model(args.model or args.run / "model", dtype=args.dtype)
    corpus = {lang: corpora.read_corpus(args.run / "corpus" / f"{lang}.parquet") for lang in languages}
    eval_docs = {
        lang: docs[docs["split"] == "eval"].sort_values("doc_id").head(args.eval_docs)["text"].tolist()
        for lang, docs in corpus.items()
    }
    sets = sets_from_counts(args.run / "counts", languages, args.rho, args.set_kinds)
    before = evaluate(model, tokenizer, eval_docs, args.max_length, args.eval_batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / "runs.parquet"
    done = read_parquet(runs_path) if runs_path.exists() else pd.DataFrame(columns=[*RUN_KEYS, "eval_language"])
    finished = {tuple(row) for row in done[list(RUN_KEYS)].drop_duplicates().itertuples(index=False)}
    rows = done.to_dict("records")
    for key in planned_runs(args):
        if tuple(key.values()) in finished:
            continue
        target, method = key["target_language"], key["method"]
        neurons = language_set(sets, target, key["set_kind"]) if key["set_kind"] else None
        if neurons is not None and neurons.empty:
            print(f"skip {key}: the set is empty", flush=True)
            continue
        documents = corpus[target]
        texts = documents[documents["split"] == "finetune"].sort_values("doc_id")["text"].tolist()
        config = finetuning.FinetuneConfig(
            lr=key["lr"], batch_size=args.batch_size, grad_accum=1, max_length=args.max_length,
            n_docs=args.n_docs, seed=key["seed"], progress=False,
        )  # fmt: skip
        start = time.perf_counter()
        result = finetuning.finetune(
            copy.deepcopy(model), texts, config, method=method, neurons=neurons, target_language=target,
            tokenizer=tokenizer, control_seed=key["seed"],
        )  # fmt: skip
        result.model.eval()
        after = evaluate(result.model, tokenizer, eval_docs, args.max_length, args.eval_batch_size)
        extra = {"trainable_params": result.record.trainable_params, "wall_s": time.perf_counter() - start}
        rows += run_rows(key, before, after, extra)
        write_parquet_atomic(pd.DataFrame(rows), runs_path)
        print(json.dumps({**key, "gain_target": -rows[-len(before) :][languages.index(target)]["change_pct"],
                          "wall_s": round(extra["wall_s"], 1)}), flush=True)  # fmt: skip
    runs = pd.DataFrame(rows)
    write_parquet_atomic(summarise(runs), args.out / "summary.parquet")
    write_json_atomic({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                       "languages": languages}, args.out / "settings.json")  # fmt: skip


if __name__ == "__main__":
    main()
