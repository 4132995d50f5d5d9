"""What a full run of a 7-8B preset costs: tokens, GPU-hours, storage and memory per stage, and how it spreads
over N GPUs. Writes docs/scaling.md.

Usage: python bench/scaling.py [--write docs/scaling.md] [--forward-tokens-per-s 5000]
       [--scoring-tokens-per-s 700] [--load-s 60] [--gpus 1 4 8 16 32 64]

Everything model-specific comes from the architecture table: each model is built on the meta device from
its published hyper-parameters (no download, no weights), langneurons.architectures reads its neuron
counts, and the parameter count is the module's. Everything run-specific comes from the preset in
configs/ (languages, documents per split, tokens per document, shards, grids, storage dtype, resources).
Throughputs are stated assumptions, not measurements: measure yours with bench/gpu_check.sh and pass them.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

from langneurons.architectures import SITES, dimensions
from langneurons.config import load_schema, resolve_config

REPO = Path(__file__).resolve().parents[1]

#: Published hyper-parameters (config.json of each hub repository).
MODELS = {
    "mistral-7b-instruct-v0.2": MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rope_theta=1e6,
        sliding_window=None, tie_word_embeddings=False,
    ),
    "llama-3-8b": LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
}  # fmt: skip
GB = 1e9
#: Bytes per stored value of a score file: PLND scores in the storage dtype; LAPE's per-document counts
#: are float32 in a float32 file and int16 otherwise (at most max_length tokens).
VALUE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class Stage:
    name: str
    jobs: int
    gpu: bool
    forward_tokens_per_job: float  # forward-pass equivalents (a training step counts 3)
    tokens_per_s: float
    memory: str
    storage_gb: float = 0.0

    @property
    def hours_per_job(self) -> float:
        return self.forward_tokens_per_job / self.tokens_per_s / 3600


def model_facts(name: str) -> dict:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(MODELS[name])
    dims = dimensions(model)
    per_layer = {site: dims.site_size(site) for site in SITES}
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "layers": dims.n_layers,
        "per_layer": per_layer,
        "neurons": dims.n_layers * sum(per_layer.values()),
        "ffn_units": dims.n_layers * dims.intermediate_size,
        "vocab": MODELS[name].vocab_size,
        "hidden": dims.hidden_size,
        "inter": dims.intermediate_size,
    }


def preset(name: str) -> dict:
    schema = load_schema(REPO / "schemas" / "config.schema.yaml")
    layers = [yaml.safe_load((REPO / path).read_text()) for path in ("config.yaml", f"configs/{name}.yaml")]
    return resolve_config(layers, schema)


def stages(name: str, facts: dict, config: dict, args) -> list[Stage]:
    languages = len(config["languages"])
    splits = config["corpus"]["split_sizes"]
    shards = config["scoring"]["shards"]
    tokens = config["scoring"]["max_length"]
    weights_gb = facts["params"] * 2 / GB  # bf16
    lape = "lape" in config["selection"]["detectors"]
    value_bytes = VALUE_BYTES[config["scoring"]["storage_dtype"]]
    count_bytes = 4 if config["scoring"]["storage_dtype"] == "float32" else 2
    doc_bytes = facts["neurons"] * value_bytes + (facts["ffn_units"] * count_bytes + 8 if lape else 0)
    language_gb = splits["detect"] * doc_bytes / GB
    sets_mb = config["resources"]["sets"]["mem_mb"] + 3 * language_gb * 1000
    eval_tokens = evaluation_tokens(config, languages)
    # the logit lens decodes every layer: one unembedding per layer and token, against the forward's 2 x params
    lens_factor = 1 + facts["layers"] * facts["hidden"] * facts["vocab"] / facts["params"]
    lens_tokens = splits["eval"] * config["logit_lens"]["max_length"] * lens_factor
    ablation = config["ablation"]
    targets = len(ablation["targets"] or config["languages"])
    controls = 1 + len(ablation["control_seeds"])
    # one job per target and control evaluates every condition's cell on one loaded model; the baseline is one more
    group_cells = len(ablation["conditions"]) * len(ablation["set_kinds"])
    finetune = config["finetune"]
    training = finetune["training"]
    train_tokens = 3 * training["n_docs"] * training["max_length"] * training["epochs"]
    ft_cells = len(finetune["targets"] or config["languages"]) * len(finetune["methods"])
    lens_jobs = languages * (2 if config["logit_lens"]["deactivate"] else 1)
    fwd, score = args.forward_tokens_per_s, args.scoring_tokens_per_s
    load = args.load_s
    shard_gb = splits["detect"] / shards * (facts["neurons"] + facts["ffn_units"]) * 4 / GB
    model_job = f"GPU {weights_gb:.1f} GB weights + one batch"
    return [
        Stage("sample corpora (CPU, on the submit host)", languages, False, 0, 1, "resources.light"),
        Stage(
            "PLND scoring", languages * shards, True, splits["detect"] / shards * tokens + load * score, score,
            f"{model_job}; host {shard_gb:.1f} GB (the shard's float32 scores)",
            languages * splits["detect"] * doc_bytes / GB,
        ),
        Stage("activation counts (CPU)", languages, False, 0, 1, f"host {sets_mb / 1000:.1f} GB requested"),
        Stage("stability (CPU)", 1, False, 0, 1, f"host {sets_mb / 1000:.1f} GB requested (one language at a time)"),
        Stage("logit lens", lens_jobs, True, lens_tokens + load * fwd, fwd, model_job),
        Stage("ablation (one job per target and control)", 1 + targets * controls, True,
              group_cells * eval_tokens + load * fwd, fwd, model_job),
        Stage(
            "fine-tuning cells", ft_cells, True, train_tokens + eval_tokens + load * fwd, fwd,
            f"{model_job}; full fine-tuning adds {facts['params'] * 6 / GB:.0f} GB (bf16 gradients and AdamW moments, "
            "6 bytes per trained parameter; fp32 master copies would add 4 more)",
        ),
    ]  # fmt: skip


#: Prompt tokens assumed per benchmark item (a question, a passage, an article cut to fit; choices once each).
BENCHMARK_PROMPT_TOKENS = {"mgsm": 150, "xquad": 250, "xcopa": 2 * 30, "xcsqa": 5 * 40}


def evaluation_tokens(config: dict, languages: int) -> float:
    """Forward-pass tokens of one evaluation of every language (upper bound: every language has every benchmark):
    perplexity and continuation documents fill max_length; a generated token costs one forward token."""
    evaluation = config["evaluation"]
    metrics = evaluation["metrics"]
    per_language = evaluation["max_length"] * (
        evaluation["n_docs"] * ("perplexity" in metrics) + 4 * evaluation["n_items"] * ("continuation" in metrics)
    )
    if "fidelity" in metrics:
        per_language += evaluation["n_docs"] * sum(evaluation["fidelity"].values())
    for name, bench in evaluation["benchmarks"].items():
        if name not in metrics:
            continue
        prompt = bench.get("max_prompt_tokens") or BENCHMARK_PROMPT_TOKENS.get(name, evaluation["max_length"])
        per_language += (bench["n_items"] + bench.get("n_shots", 0)) * (prompt + bench.get("max_new_tokens", 0))
    return languages * per_language


def fmt_hours(hours: float) -> str:
    return f"{hours:,.1f}" if hours >= 0.1 else f"{hours * 60:.1f} min"


def report(args) -> str:
    out = [
        "# Scaling to 7-8B models",
        "",
        "What a full run of each GPU preset (`configs/`) costs: written by `python bench/scaling.py --write "
        "docs/scaling.md`, from the architecture table (each model built on the meta device from its published "
        "hyper-parameters; neuron counts from `langneurons.architectures`) and the preset's own settings. "
        "Nothing here is typed by hand.",
        "",
        "Assumptions (stated, not measured here; measure yours with `bench/gpu_check.sh` and pass them as options):",
        "",
        f"- a forward pass of a 7-8B model in bf16 reads **{args.forward_tokens_per_s:,} tokens/s** on one 80 GB "
        "GPU (an A100 at about 40% of its bf16 peak: 2 x parameters FLOPs per token); a training step costs three "
        "forward passes;",
        f"- PLND scoring of all four sites reads **{args.scoring_tokens_per_s:,} tokens/s**: the q/k "
        "probability-change work touches heads x head_dim x tokens^2 values per layer and document, memory-bound;",
        f"- every model job first loads the model: **{args.load_s} s**;",
        "- every document fills `max_length` tokens (an upper bound: shorter documents cost less).",
        "",
        "Forward-pass tokens: scoring reads each detection document once; the logit lens decodes every layer "
        "(one unembedding per layer and token, counted against the forward's 2 x parameters FLOPs); an ablation "
        "cell evaluates every language (`evaluation.n_docs` documents for perplexity and fidelity, "
        "`evaluation.n_items` continuation items of four choices, each benchmark's `n_items` with "
        f"{BENCHMARK_PROMPT_TOKENS} prompt tokens per item, or its `max_prompt_tokens`, plus the generated tokens); "
        "one ablation job loads the model once and evaluates every condition of a target and control; a "
        "fine-tuning cell trains on `finetune.training.n_docs` documents "
        "(three forward passes a token) and then evaluates like a cell. Counting and stability run on CPUs and "
        "request `resources.sets.mem_mb` plus three times one language's score files; they read one language, "
        "one site at a time, so that does not grow with the languages (measured: `bench/stability_memory.py`).",
        "",
    ]
    for name in MODELS:
        facts = model_facts(name)
        config = preset(name)
        rows = stages(name, facts, config, args)
        languages = len(config["languages"])
        splits = config["corpus"]["split_sizes"]
        dtype = config["scoring"]["storage_dtype"]
        doc_values = facts["neurons"]
        out += [
            f"## {name}",
            "",
            f"{facts['params'] / 1e9:.2f} B parameters, {facts['layers']} layers; per layer "
            + ", ".join(f"{site} {size:,}" for site, size in facts["per_layer"].items())
            + f": **{doc_values:,} scored neurons**. Preset: {languages} languages x {splits['detect']:,} detection "
            f"documents of {config['scoring']['max_length']} tokens, scores stored in {dtype}.",
            "",
            "Score storage per document (PLND sites, plus LAPE's per-unit token counts when LAPE is on):",
            "",
            "| storage dtype | PLND scores | with LAPE counts | all documents |",
            "|---|---|---|---|",
        ]
        for option, value_bytes in VALUE_BYTES.items():
            count_bytes = 4 if option == "float32" else 2
            plnd = doc_values * value_bytes
            with_lape = plnd + facts["ffn_units"] * count_bytes + 8
            total = languages * splits["detect"] * with_lape
            out.append(
                f"| {option} | {plnd / 1e6:.2f} MB | {with_lape / 1e6:.2f} MB | {total / GB:.1f} GB |"
            )
        out += [
            "",
            "| stage | jobs | forward-pass tokens per job | GPU-hours per job | GPU-hours | storage | memory per job |",
            "|---|---|---|---|---|---|---|",
        ]
        total_hours = 0.0
        for stage in rows:
            hours = stage.hours_per_job * stage.jobs if stage.gpu else 0.0
            total_hours += hours
            tokens = f"{stage.forward_tokens_per_job - args.load_s * stage.tokens_per_s:,.0f}" if stage.gpu else "-"
            per_job = fmt_hours(stage.hours_per_job) if stage.gpu else "CPU"
            storage = f"{stage.storage_gb:.1f} GB" if stage.storage_gb else ""
            out.append(
                f"| {stage.name} | {stage.jobs} | {tokens} | {per_job} | "
                f"{fmt_hours(hours) if stage.gpu else '-'} | {storage} | {stage.memory} |"
            )
        out += [f"| **total** | | | | **{total_hours:,.0f}** | | |", ""]
        out += [
            "Spread over N GPUs: stages run one after another (scoring, then the sets, then the lens and the grids, "
            "which are independent of each other); within a stage the jobs are independent, so a stage takes "
            "ceil(jobs / N) rounds of one job. Wall-clock hours:",
            "",
            "| GPUs | " + " | ".join(str(n) for n in args.gpus) + " |",
            "|---|" + "---|" * len(args.gpus),
        ]
        gpu_rows = [stage for stage in rows if stage.gpu]
        scoring, rest = gpu_rows[0], gpu_rows[1:]

        def wall(n: int) -> float:
            first = math.ceil(scoring.jobs / n) * scoring.hours_per_job
            after = sum(stage.jobs * stage.hours_per_job for stage in rest)
            longest = max(stage.hours_per_job for stage in rest)
            return first + max(after / n, longest)

        out.append("| hours | " + " | ".join(f"{wall(n):,.1f}" for n in args.gpus) + " |")
        out += [
            "",
            f"Scoring is {scoring.jobs} jobs ({config['scoring']['shards']} shards per language): beyond "
            f"{scoring.jobs} GPUs it does not get faster; raise `scoring.shards` (the shards merge exactly). The "
            "grids are hundreds of short jobs and fill any number of GPUs; each job's model load is part of its "
            "cost above.",
            "",
        ]
    out += [
        "## Regenerate",
        "",
        "```bash",
        "python bench/scaling.py --write docs/scaling.md "
        f"--forward-tokens-per-s {args.forward_tokens_per_s} --scoring-tokens-per-s {args.scoring_tokens_per_s} "
        f"--load-s {args.load_s}",
        "```",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="write the report here (docs/scaling.md)")
    parser.add_argument("--forward-tokens-per-s", type=int, default=5000)
    parser.add_argument("--scoring-tokens-per-s", type=int, default=700)
    parser.add_argument("--load-s", type=int, default=60)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    args = parser.parse_args(argv)
    text = report(args)
    if args.write:
        args.write.write_text(text, encoding="utf-8")
    print(text)
    return text


if __name__ == "__main__":
    main()
