"""Agreement of fast (second-order) q/k scores with exact ones: the neurons each selects.

Scores every language's detection documents twice, ``qk_mode="exact"`` and
``qk_mode="fast"``, and compares what selection makes of them at the configured
top-k and rho (``langneurons.selection``): per site (attn_q, attn_k) and language,
the Jaccard of the activated and of the language-specific sets, and the mean
Jaccard of the per-document top-k sets. Prints a table; the last line is one
JSON object.

    # the demo model (trained here if --model-dir does not hold one) on the demo Bible corpus
    python bench/qk_fast_agreement.py --demo --model-dir /tmp/demo_model --train-steps 300
    # a local model folder (e.g. a converted Gemma-3-270m) on the demo Bible corpus, a few languages
    python bench/qk_fast_agreement.py --model /tmp/gemma3-270m --languages en de ru zh --docs 12
    # ... or on FLORES sentences
    python bench/qk_fast_agreement.py --model /tmp/gemma3-270m --sentences ../shared/data/parallel_sentences
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from langneurons.corpora import sample_corpus
from langneurons.scoring import score_documents
from langneurons.selection import ActivationCounts, neuron_sets, resolve_top_k, top_k_mask

ROOT = Path(__file__).resolve().parent.parent
SITES = ("attn_q", "attn_k")


def _defaults() -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    return dict(
        languages=config["languages"],
        split_sizes=config["corpus"]["split_sizes"],
        filters=config["corpus"]["filters"],
        top_k=config["selection"]["top_k"],
        rho=config["selection"]["rho"],
        seed=config["seed"],
        max_length=config["scoring"]["max_length"],
    )


def _demo_documents(languages, defaults) -> tuple[dict[str, list[str]], dict[str, pd.DataFrame]]:
    sizes, seed, filters = defaults["split_sizes"], defaults["seed"], defaults["filters"]
    corpus = sample_corpus({"source": "demo"}, languages, sizes, seed, filters)
    return {lang: frame[frame.split == "detect"]["text"].tolist() for lang, frame in corpus.items()}, corpus


def _train_demo(model_dir: Path, corpus: dict[str, pd.DataFrame], steps: int, threads: int) -> None:
    from langneurons.demo_model import DemoModelConfig, train_demo_model

    frames = pd.concat(corpus.values())
    config = DemoModelConfig(max_steps=steps, num_threads=threads, progress=False)
    train_demo_model(frames[frames.split == "train"], frames[frames.split == "eval"], model_dir, config)


def _sentence_documents(folder: Path, languages, n_docs: int, per_doc: int) -> dict[str, list[str]]:
    """FLORES-style ``<lang>.tsv`` files (a ``text`` column): documents of ``per_doc`` consecutive sentences."""
    documents = {}
    for language in languages:
        sentences = pd.read_csv(folder / f"{language}.tsv", sep="\t")["text"].str.strip().tolist()
        chunks = [" ".join(sentences[i : i + per_doc]) for i in range(0, len(sentences) - per_doc + 1, per_doc)]
        documents[language] = chunks[:n_docs]
    return documents


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else float("nan")


def main() -> None:
    defaults = _defaults()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--demo", action="store_true", help="the demo model on the demo corpus")
    source.add_argument("--model", type=Path, help="a local model folder (with its tokenizer)")
    parser.add_argument("--model-dir", type=Path, default=None, help="--demo: the demo model's folder")
    parser.add_argument("--train-steps", type=int, default=300, help="--demo: steps when training it here")
    parser.add_argument(
        "--sentences", type=Path, default=None, help="--model: folder of <lang>.tsv sentences (default: the Bible)"
    )
    parser.add_argument("--sentences-per-doc", type=int, default=4)
    parser.add_argument("--languages", nargs="+", default=None)
    parser.add_argument("--docs", type=int, default=100, help="documents per language (at most)")
    parser.add_argument("--max-length", type=int, default=defaults["max_length"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    top_k = {site: defaults["top_k"][site] for site in SITES}
    rho = defaults["rho"]

    if args.demo:
        languages = args.languages or defaults["languages"]
        documents, corpus = _demo_documents(languages, defaults)
        model_dir = args.model_dir or ROOT / "results" / "demo" / "model"
        if not (model_dir / "config.json").exists():
            print(f"training the demo model ({args.train_steps} steps) into {model_dir}", flush=True)
            _train_demo(model_dir, corpus, args.train_steps, args.threads)
        model_path = model_dir
    elif args.sentences is None:
        languages = args.languages or defaults["languages"]
        documents, _ = _demo_documents(languages, defaults)
        model_path = args.model
    else:
        languages = args.languages or sorted(p.stem for p in args.sentences.glob("*.tsv"))
        documents = _sentence_documents(args.sentences, languages, args.docs, args.sentences_per_doc)
        model_path = args.model
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()

    load_before = os.getloadavg()[0]
    scores = {"exact": {}, "fast": {}}
    seconds = {"exact": 0.0, "fast": 0.0}
    for language in languages:
        texts = documents[language][: args.docs]
        for mode in scores:
            start = time.perf_counter()
            scores[mode][language] = score_documents(
                model, tokenizer, texts, sites=SITES, batch_size=args.batch_size, max_length=args.max_length,
                progress=False, qk_mode=mode,
            )  # fmt: skip
            seconds[mode] += time.perf_counter() - start
        print(f"{language}: {len(texts)} documents scored", flush=True)

    counts = {
        mode: {lang: ActivationCounts.from_scores(s, top_k) for lang, s in per.items()} for mode, per in scores.items()
    }
    sets = {mode: neuron_sets(per, rho, kinds=("activated", "specific")) for mode, per in counts.items()}
    rows = []
    for language in languages:
        for site in SITES:
            exact, fast = scores["exact"][language][site], scores["fast"][language][site]
            k = resolve_top_k(top_k[site], exact.shape[-1], site)
            a, b = top_k_mask(exact, k), top_k_mask(fast, k)
            per_doc = ((a & b).sum(-1) / (a | b).sum(-1)).mean().item()
            row = {"language": language, "site": site, "per_doc_topk_jaccard": round(per_doc, 4)}
            for kind in ("activated", "specific"):
                chosen = []
                for table in (sets["exact"], sets["fast"]):
                    picked = table[(table.language == language) & (table.set_kind == kind) & (table.site == site)]
                    chosen.append(set(picked[["layer", "index"]].itertuples(index=False, name=None)))
                row[f"{kind}_exact"], row[f"{kind}_fast"] = len(chosen[0]), len(chosen[1])
                row[f"{kind}_jaccard"] = round(_jaccard(*chosen), 4)
            rows.append(row)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    summary = {
        "model": str(model_path), "languages": languages, "top_k": top_k, "rho": rho,
        "docs_per_language": min(len(documents[lang][: args.docs]) for lang in languages),
        "scoring_s": {mode: round(value, 1) for mode, value in seconds.items()},
        "load_avg_before": load_before, "load_avg_after": os.getloadavg()[0],
        "min_per_doc_topk_jaccard": float(table["per_doc_topk_jaccard"].min()),
        "min_activated_jaccard": float(table["activated_jaccard"].min()),
        "rows": rows,
    }  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
