"""The q/k probability change of one layer: native kernel vs torch vs fast, time and peak memory.

Usage: python bench/qk_kernel.py [--heads 4] [--head-dim 48] [--seq 128 256] [--batch 1] [--rounds 5]
       [--threads 2] [--chunk-bytes 2097152]

Times :func:`langneurons.attention_change.prob_change_sumsq` on random inputs of one
attention layer (the demo model's shape by default: 4 heads of 48), both sites' lanes
(2 x head dim) in one call as scoring makes it: exact through the
native kernel, exact through torch, and fast; medians of interleaved rounds, in wall
and in process CPU time (the one to read on a shared machine, at ``--threads 1``). Each
variant also runs once in a fresh subprocess that reports its peak resident memory
above what it held just before the call (Linux: ``/proc/self/clear_refs`` resets the
peak), next to ``--chunk-bytes``, the budget of the q/k temporaries. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from langneurons import attention_change

VARIANTS = ("native", "torch", "fast")


def _inputs(heads: int, head_dim: int, n: int, batch: int, seed: int = 0) -> dict:
    """A batch's scores with a rotary-style rank-2 removal per (head, lane), causal mask, 2 x head_dim lanes."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, heads, n, head_dim, generator=gen)
    key = torch.randn(batch, heads, n, head_dim, generator=gen)
    scaling = head_dim**-0.5
    raw = query @ key.transpose(-1, -2) * scaling
    bias = torch.zeros(1, 1, n, n).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), torch.finfo().min)
    lanes = lambda x: torch.cat([x, x.roll(1, -1)], dim=-1)  # noqa: E731  two sites' lanes
    left = torch.stack([lanes(query), lanes(query.roll(2, -1))], dim=3)  # [B, H, n, 2, 2 D]
    right = torch.stack([lanes(key), lanes(key.roll(2, -1))], dim=3)
    return dict(raw=raw, bias=bias, probs=torch.softmax(raw + bias, -1), left=left, right=right,
                delta_scale=scaling, softcap=None)  # fmt: skip


def _runner(variant: str, x: dict, chunk_bytes: int):
    if variant == "native" and attention_change._native_kernel() is None:
        raise SystemExit("the native kernel is not available here")
    if variant == "torch":

        def torch_only():
            saved = attention_change._native_kernel
            attention_change._native_kernel = lambda: None
            try:
                return attention_change.prob_change_sumsq(**x, chunk_bytes=chunk_bytes)
            finally:
                attention_change._native_kernel = saved

        return torch_only
    mode = "fast" if variant == "fast" else "exact"
    return lambda: attention_change.prob_change_sumsq(**x, chunk_bytes=chunk_bytes, mode=mode)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_child(args) -> None:
    """In a fresh process: run one variant once after a warm-up; print the peak RSS above the baseline, in MiB."""
    torch.set_num_threads(args.threads)
    x = _inputs(args.heads, args.head_dim, args.seq[0], args.batch)
    run = _runner(args.peak, x, args.chunk_bytes)
    run()  # warm-up: the allocator's pools and the kernel's build are not the call's temporaries
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set size (VmHWM)
    before = _rss_kib("VmRSS")
    run()
    print(json.dumps({"peak_above_mib": round((_rss_kib("VmHWM") - before) / 1024, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=48)
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-bytes", type=int, default=2 * 2**20)
    parser.add_argument("--peak", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        _peak_child(args)
        return
    torch.set_num_threads(args.threads)
    results = {"heads": args.heads, "head_dim": args.head_dim, "batch": args.batch, "threads": args.threads,
               "chunk_bytes": args.chunk_bytes, "load_avg_before": os.getloadavg()[0], "seq": {}}  # fmt: skip
    for n in args.seq:
        x = _inputs(args.heads, args.head_dim, n, args.batch)
        runs = {variant: _runner(variant, x, args.chunk_bytes) for variant in VARIANTS}
        outputs = {variant: run() for variant, run in runs.items()}  # warm-up
        seconds = {variant: [] for variant in VARIANTS}
        cpu_seconds = {variant: [] for variant in VARIANTS}
        for _ in range(args.rounds):
            for variant, run in runs.items():
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                seconds[variant].append(time.perf_counter() - start)
                cpu_seconds[variant].append(time.process_time() - cpu_start)
        row = {f"{v}_ms": round(1000 * statistics.median(s), 2) for v, s in seconds.items()}
        row |= {f"{v}_cpu_ms": round(1000 * statistics.median(s), 2) for v, s in cpu_seconds.items()}
        difference = (outputs["native"] - outputs["torch"]).abs() / outputs["torch"]
        row["native_vs_torch_max_rel_diff"] = difference.max().item()
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--peak", variant, "--seq", str(n), "--batch", str(args.batch),
                       "--heads", str(args.heads),
                       "--head-dim", str(args.head_dim), "--threads", str(args.threads),
                       "--chunk-bytes", str(args.chunk_bytes)]  # fmt: skip
            child = subprocess.run(command, capture_output=True, text=True, check=True)
            row[f"{variant}_peak_above_mib"] = json.loads(child.stdout.splitlines()[-1])["peak_above_mib"]
        results["seq"][n] = row
        print(f"seq {n}: " + ", ".join(f"{key} {value:.4g}" for key, value in row.items()), flush=True)
    results["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
