"""Peak memory of the stability step against the number of languages.

Usage: python bench/stability_memory.py [--languages 3 6] [--docs 200] [--layers 8] [--ffn 4096]
       [--attn 1024] [--kv 256] [--shards 2] [--dtype float32] [--all-at-once]

Writes synthetic score shards (each language prefers its own tenth of the neurons, so that its sets are
not empty) for each language count, then runs the workflow's stability step in a fresh process and
reports that process's peak resident memory (ru_maxrss) above what it held after its imports, next to
the size of one language's scores. --all-at-once also measures the design it replaced: every
language's scores loaded and concatenated at once. The last output line is one JSON list.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys
from langneurons.scorefiles import ScoreShards, release_large_blocks
from langneurons.selection import set_stability
from langneurons.steps.neurons import stability_step

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

shards, out, all_at_once = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
settings = {"set_kind": "activated", "n_docs": [16, 32, "all"], "replicates": 2}
top_k = {"ffn": 0.25, "attn_q": 0.25, "attn_k": 0.25, "attn_v": 0.25}
baseline = rss_mb()
if all_at_once:
    import torch
    release_large_blocks()  # as the streamed step does, for a fair comparison
    loaded = {}
    for language, paths in shards.items():
        reader = ScoreShards(paths)
        loaded[language] = {site: torch.cat([ScoreShards([p])[site] for p in paths]) for site in reader
                            if site not in ("ffn_active", "n_tokens")}
    set_stability(loaded, top_k, 0.5, "activated", settings["n_docs"], 0, settings["replicates"])
else:
    stability_step(shards, top_k, 0.5, settings, 0, out + ".parquet", out + ".json")
print(json.dumps({"baseline_mb": baseline, "peak_mb": rss_mb()}))
"""


def write_language(folder: Path, language: str, index: int, args) -> list[str]:
    import torch

    from langneurons.scorefiles import write_shard

    sizes = {"ffn": args.ffn, "attn_q": args.attn, "attn_k": args.kv, "attn_v": args.kv}
    gen = torch.Generator().manual_seed(index)
    paths = []
    per_shard = args.docs // args.shards
    for shard in range(args.shards):
        scores = {}
        for site, size in sizes.items():
            tensor = torch.rand(per_shard, args.layers, size, generator=gen)
            preferred = torch.arange(size) % 10 == index % 10
            tensor[..., preferred] += 1.0
            scores[site] = tensor
        path = folder / language / f"shard{shard}-of-{args.shards}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = [f"{language}:{shard}:{i}" for i in range(per_shard)]
        write_shard(str(path), scores, ids, {}, args.dtype)
        paths.append(str(path))
    return paths


def measure(n_languages: int, args, all_at_once: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shards = {f"l{i}": write_language(folder, f"l{i}", i, args) for i in range(n_languages)}
        one_language_mb = sum(Path(p).stat().st_size for p in shards["l0"]) / 2**20
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(shards), str(folder / "stability"), "1" if all_at_once else "0"],
            capture_output=True,
            text=True,
            check=True,
        )
        child = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "languages": n_languages,
        "design": "all at once" if all_at_once else "streamed",
        "one_language_scores_mb": round(one_language_mb, 1),
        "all_scores_mb": round(one_language_mb * n_languages, 1),
        "peak_above_imports_mb": round(child["peak_mb"] - child["baseline_mb"], 1),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--languages", type=int, nargs="+", default=[3, 6])
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=4096)
    parser.add_argument("--attn", type=int, default=1024)
    parser.add_argument("--kv", type=int, default=256)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--all-at-once", action="store_true", help="also measure loading every language at once")
    args = parser.parse_args(argv)
    rows = []
    for n_languages in args.languages:
        for all_at_once in (False, True) if args.all_at_once else (False,):
            rows.append(measure(n_languages, args, all_at_once))
            print(rows[-1], flush=True)
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
