"""Throughput of PLND scoring against a plain forward pass, same batch, same process.

Usage: python bench/score_throughput.py [--preset tiny|llama2-7b | --model PATH] [--seq 256] [--batch 8]
       [--dtype float32|bfloat16] [--device cpu|cuda] [--rounds 5] [--threads 2]

Builds a random-init Llama from a preset (no download), or loads ``--model`` (a
local Hugging Face folder, e.g. a converted Gemma-3-270m), and times, interleaved
over ``--rounds`` rounds so that a changing machine load hits every variant alike:

- ``forward``: a plain forward pass (the model's default attention) that keeps the
  last position's logits only, like scoring;
- ``ffn_v``: PLND scoring of ffn + attn_v;
- ``all_sites``: PLND scoring of all four sites, exact q/k (``qk_mode="exact"``);
- ``all_sites_fast``: all four sites with ``qk_mode="fast"``.

Reports medians (tokens/s) and the peak memory of each variant (on CPUs: the
process's peak resident memory so far), and the load average (the machine may be
shared). On CPUs it also reports tokens per second of the process's CPU time
(``*_tok_cpu_s``): on a shared, oversubscribed machine wall time measures the
neighbours, CPU time at ``--threads 1`` measures the work (with more threads it
also counts the threads' spin-waits). The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from langneurons.architectures import UnsupportedArchitectureError, get_architecture
from langneurons.scoring import score_batch

PRESETS = {
    # the demo model's shape (langneurons.demo_model.DemoModelConfig)
    "tiny": dict(hidden_size=192, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=8000),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000),
}  # fmt: skip


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _process_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _build(args) -> torch.nn.Module:
    dtype = getattr(torch, args.dtype)
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    torch.manual_seed(0)
    config = LlamaConfig(**PRESETS[args.preset], max_position_embeddings=max(4096, args.seq))
    with torch.device(args.device):
        return LlamaForCausalLM(config).to(dtype).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--model", default=None, help="a local model folder instead of a random preset")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = _build(args)
    vocab = model.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (args.batch, args.seq), generator=gen).to(args.device)
    mask = torch.ones_like(ids)
    tokens = args.batch * args.seq
    try:
        get_architecture(model)
        supported = True
    except UnsupportedArchitectureError as error:  # still time the forward passes
        print(f"scoring is not timed: {error}", flush=True)
        supported = False

    def forward():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)

    runs = {"forward": forward}
    if supported:
        runs |= {
            "ffn_v": lambda: score_batch(model, ids, mask, sites=("ffn", "attn_v")),
            "all_sites": lambda: score_batch(model, ids, mask, qk_mode="exact"),
            "all_sites_fast": lambda: score_batch(model, ids, mask, qk_mode="fast"),
        }
    load_before = _load_average()
    for fn in runs.values():  # warm-up (and the native kernel's one-time build)
        fn()
    seconds = {name: [] for name in runs}
    cpu_seconds = {name: [] for name in runs}
    peaks = {name: 0.0 for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            _sync(args.device)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            _sync(args.device)
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - cpu_start)
            if args.device.startswith("cuda"):
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / 2**20)
            else:  # the process's peak resident memory so far (CPU has no per-variant counter)
                peaks[name] = _process_peak_mb()

    results = {
        "model": args.model or args.preset, "preset": None if args.model else args.preset, "seq": args.seq,
        "batch": args.batch, "dtype": args.dtype, "device": args.device, "threads": torch.get_num_threads(),
        "rounds": args.rounds, "load_avg_before": load_before, "load_avg_after": _load_average(),
    }  # fmt: skip
    for name in runs:
        rate = tokens / statistics.median(seconds[name])
        spread = (tokens / max(seconds[name]), tokens / min(seconds[name]))
        peak = peaks[name]
        results[f"{name}_tok_s"] = round(rate, 1)
        results[f"{name}_tok_cpu_s"] = round(tokens / statistics.median(cpu_seconds[name]), 1)
        results[f"{name}_peak_mb"] = round(peak, 1)
        note = f"peak {peak:.0f} MiB" + ("" if args.device.startswith("cuda") else " (process RSS)")
        print(
            f"{name:>15}: {rate:10.1f} tok/s (median of {args.rounds}; {spread[0]:.0f}-{spread[1]:.0f}), "
            f"{results[f'{name}_tok_cpu_s']:10.1f} tok per CPU s  {note}"
        )
    for name in ("ffn_v", "all_sites", "all_sites_fast"):
        if name not in runs:
            results[f"{name}_tok_s"] = results[f"{name}_ratio"] = results[f"{name}_cpu_ratio"] = None
            continue
        results[f"{name}_ratio"] = round(results[f"{name}_tok_s"] / results["forward_tok_s"], 3)
        results[f"{name}_cpu_ratio"] = round(results[f"{name}_tok_cpu_s"] / results["forward_tok_cpu_s"], 3)
    print(f"load average: {results['load_avg_before']} before, {results['load_avg_after']} after", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
