"""What storing scores in float16 or bfloat16 does to the neuron sets, on a real pretrained model and real text.

Usage: python bench/storage_dtype.py [--model /tmp/gemma3-270m] [--data ../shared/data/docs/xquad]
       [--docs 60] [--max-length 128] [--top-k 0.1395] [--rho 1.0 0.9 0.5] [--threads 1]

Scores the FFN units of a plain Hugging Face model folder (PLND's exact FFN importance, method.md:
||a_k|| x ||W_down[:, k]|| over a document's tokens, from a hook on each down projection, so any gated
architecture works) on each language's first documents, then compares per-document top-k memberships
and the activated / specific / exclusive sets found from float32, float16 and bfloat16 copies of the
same scores. The default top-k is the presets' fraction, 2000 of 14,336. Needs the model folder and the
shared data (neither is part of the project); the last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from langneurons.selection import ActivationCounts, neuron_sets, resolve_top_k, top_k_mask


def ffn_scores(model, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """``[docs, layers, intermediate]`` float32: ||a_k||_2 over the document's tokens x ||W_down[:, k]||_2."""
    layers = model.model.layers
    norms = [layer.mlp.down_proj.weight.float().norm(dim=0) for layer in layers]
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        layer.mlp.down_proj.register_forward_pre_hook(
            lambda module, args, i=i: captured.__setitem__(i, args[0][0].float().norm(dim=0))
        )
        for i, layer in enumerate(layers)
    ]
    rows = []
    try:
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
                model.model(input_ids=ids)  # the decoder only: no 262k-vocabulary logits
                rows.append(torch.stack([captured[i] * norms[i] for i in range(len(layers))]))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/tmp/gemma3-270m")
    parser.add_argument("--data", default="../shared/data/docs/xquad", help="relative to the working directory")
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--top-k", type=float, default=2000 / 14336)
    parser.add_argument("--rho", type=float, nargs="+", default=[1.0, 0.9, 0.5])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (on a shared machine, 1 is fastest)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not Path(args.model).is_dir() or not data.is_dir():
        raise SystemExit(f"needs a model folder ({args.model}) and the shared data ({data}); see the usage")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    scores = {}
    for path in sorted(data.glob("*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()[: args.docs]
        texts = [json.loads(line)["text"].replace("\ufeff", "").replace("\u200b", "") for line in lines]
        scores[path.stem] = ffn_scores(model, tokenizer, texts, args.max_length)
        print(path.stem, tuple(scores[path.stem].shape), flush=True)
    size = next(iter(scores.values())).shape[-1]
    k = resolve_top_k(args.top_k, size, "ffn")
    result = {"model": args.model, "languages": sorted(scores), "docs": args.docs, "units_per_layer": size, "k": k}
    for dtype in ("float16", "bfloat16"):
        rounded = {lang: s.to(getattr(torch, dtype)) for lang, s in scores.items()}
        moved = sum(int((top_k_mask(s, k) ^ top_k_mask(rounded[lang], k)).sum()) for lang, s in scores.items())
        memberships = sum(s.shape[0] * s.shape[1] * k for s in scores.values())
        per_rho = {}
        for rho in args.rho:
            sets = {}
            for name, table in (("float32", scores), (dtype, rounded)):
                top_k = {"ffn": args.top_k}
                counts = {lang: ActivationCounts.from_scores({"ffn": s}, top_k) for lang, s in table.items()}
                frame = neuron_sets(counts, rho)
                sets[name] = set(map(tuple, frame[["language", "set_kind", "layer", "site", "index"]].values.tolist()))
            per_rho[str(rho)] = {
                "float32_set_members": len(sets["float32"]),
                "only_float32": len(sets["float32"] - sets[dtype]),
                "only_rounded": len(sets[dtype] - sets["float32"]),
            }
        result[dtype] = {"moved_memberships": moved, "of_memberships": memberships, "sets": per_rho}
        print(dtype, json.dumps(result[dtype]), flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
