"""Throughput of PLND scoring against a plain forward pass, same batch, same process.

Usage: python bench/score_throughput.py [--preset tiny|llama2-7b] [--seq 256] [--batch 8]
       [--dtype float32|bfloat16] [--device cpu|cuda] [--repeats 3]

Builds a random-init Llama from a config (no download), times a plain forward
pass (the model's default attention), PLND scoring of ffn+attn_v, and PLND
scoring of all four sites. The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from langneurons.scoring import score_batch

PRESETS = {
    # the demo model's shape
    "tiny": dict(hidden_size=192, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=8000),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000),
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device: str) -> float | None:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _time(fn, device: str, repeats: int) -> tuple[float, float | None]:
    fn()  # warm-up
    _sync(device)
    _reset_peak(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, _peak_mb(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    config = LlamaConfig(**PRESETS[args.preset], max_position_embeddings=max(4096, args.seq))
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    ids = torch.randint(3, config.vocab_size, (args.batch, args.seq), device=args.device)
    mask = torch.ones_like(ids)
    tokens = args.batch * args.seq

    def forward():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)

    results = {"preset": args.preset, "seq": args.seq, "batch": args.batch, "dtype": args.dtype,
               "device": args.device, "threads": torch.get_num_threads()}
    runs = {
        "forward": forward,
        "ffn_v": lambda: score_batch(model, ids, mask, sites=("ffn", "attn_v")),
        "all_sites": lambda: score_batch(model, ids, mask),
    }
    for name, fn in runs.items():
        seconds, peak = _time(fn, args.device, args.repeats)
        results[f"{name}_tok_s"] = round(tokens / seconds, 1)
        results[f"{name}_peak_mb"] = None if peak is None else round(peak, 1)
        print(f"{name:>10}: {tokens / seconds:10.1f} tok/s   peak {peak:.0f} MiB", flush=True)
    results["ffn_v_ratio"] = round(results["ffn_v_tok_s"] / results["forward_tok_s"], 3)
    results["all_sites_ratio"] = round(results["all_sites_tok_s"] / results["forward_tok_s"], 3)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
