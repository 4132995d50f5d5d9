"""Benchmark: sample the default demo corpus, train the default demo model.

Measures the cost the workflow pays on a fresh clone (budget: 8 minutes on
2 CPU cores) and the quality of the resulting model (held-out perplexity
per language on split ``eval``). Prints progress, a summary table, and as
its last line one JSON object: wall_s, params, ppl per language.

    python bench/demo_model.py                # default config, ~7 minutes
    python bench/demo_model.py --tiny         # seconds; smoke test
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from langneurons.corpora import DEMO_CORE_LANGUAGES, sample_corpus
from langneurons.demo_model import DemoModelConfig, train_demo_model

#: Paper-like sizes scaled to the 1189 chapters: detection 100, fine-tuning 400
#: (as in the paper), evaluation 100; the rest trains the demo model.
DEFAULT_SPLITS = {"detect": 100, "finetune": 400, "eval": 100, "train": "all"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--languages", nargs="+", default=list(DEMO_CORE_LANGUAGES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="use DemoModelConfig.tiny()")
    parser.add_argument("--out", type=Path, default=None, help="model directory (default: a temporary one)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    corpus = pd.concat(sample_corpus({"source": "demo"}, args.languages, DEFAULT_SPLITS, seed=args.seed).values())
    t_sample = time.perf_counter() - t0
    counts = corpus.groupby(["language", "split"]).size().unstack(fill_value=0)
    print(f"sampled corpus in {t_sample:.1f} s\n{counts}", flush=True)

    config = DemoModelConfig.tiny() if args.tiny else DemoModelConfig()
    config.seed, config.num_threads = args.seed, args.threads
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "demo_model"
        ppl = train_demo_model(corpus[corpus.split == "train"], corpus[corpus.split == "eval"], out, config)
        log = json.loads((Path(out) / "training_log.json").read_text())
    wall = time.perf_counter() - t0

    print(ppl.to_string(index=False))
    print(
        f"wall {wall:.1f} s (sampling {t_sample:.1f}, tokenizer {log['tokenizer_s']}, training {log['train_s']}); "
        f"{log['n_params']:,} params; {log['steps']} steps ({log['stopped_by']}), "
        f"{log['tokens_seen'] / log['train_s']:.0f} tokens/s; loss {log['loss_history'][0]:.2f} -> "
        f"{sum(log['loss_history'][-20:]) / len(log['loss_history'][-20:]):.2f}"
    )
    print(
        json.dumps(
            {
                "wall_s": round(wall, 1),
                "params": log["n_params"],
                "steps": log["steps"],
                "stopped_by": log["stopped_by"],
                "ppl": {r.language: round(r.perplexity, 1) for r in ppl.itertuples()},
            }
        )
    )


if __name__ == "__main__":
    main()
