"""A small multilingual Llama trained from scratch on the demo corpus.

Why: no model weights can be downloaded on the project's machines, yet the
reproduction must run end to end on a real multilingual model. This module
trains one in minutes on two CPU cores: a byte-level BPE tokenizer and a
``LlamaForCausalLM`` of a few million parameters, saved with
``save_pretrained`` so that every later step loads it exactly like a hub
model, by path (``AutoModelForCausalLM.from_pretrained(path)``,
``AutoTokenizer.from_pretrained(path)``).

Data contract (no leakage into the experiments):

* the model trains **only** on documents of split ``train`` of the demo
  corpus: the chapters that are in none of ``detect``, ``finetune`` or
  ``eval`` (``split_sizes={"detect": n, "finetune": m, "eval": k, "train":
  "all"}`` in :func:`langneurons.corpora.sample_language`). Neuron
  detection, targeted fine-tuning and evaluation therefore all see text
  the model has never seen; :func:`train_demo_model` refuses training rows
  of any other split and any text that also appears in ``eval_docs``;
* held-out perplexity is measured on split ``eval``.

The tokenizer is trained on the same training documents. Training mixes
languages English-heavy, like real LLM pretraining: each sequence is a
random window of one language's concatenated documents, the language drawn
with weight ``english_weight`` (default 3) for English and 1 for every
other language. The tokenizer sees the same weighting (English repeated).

Training is seeded (Python, NumPy, torch, and a dedicated torch generator
for the data) and runs in fp32, which is faster than bf16 autocast on the
project's CPUs. It stops at ``max_steps`` or when ``max_seconds`` (tokenizer
training plus model training) are used up, whichever comes first; the
cosine schedule follows whichever of the two is closer to its end (see
:func:`_schedule_progress`), so the model ends annealed either way. What
stopped it, and for how many steps the clock led the schedule (0 means
bit-reproducible), are recorded in ``training_log.json``.

Output directory (written atomically: a temporary directory renamed into
place): ``config.json``, ``model.safetensors``, ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json``, ``training_log.json`` and
``heldout_perplexity.parquet``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from langneurons.evaluation import perplexity
from langneurons.io import atomic_dir, provenance, write_json_atomic

__all__ = [
    "DemoModelConfig",
    "build_tokenizer",
    "evaluate_perplexity",
    "train_demo_model",
]

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
PPL_COLUMNS = ["language", "n_docs", "n_tokens", "loss", "perplexity"]


@dataclass
class DemoModelConfig:
    """Tokenizer, architecture and training settings of the demo model.

    The defaults follow the measured feasibility run (hidden 192, 6 layers,
    FFN 768, 4 heads; here with 2 kv heads, i.e. grouped-query attention,
    so the GQA code paths of the later steps get exercised) and fit the
    8-minute, 2-core budget including tokenizer training and evaluation.
    ``max_seconds`` is off by default: a wall-clock budget would make the
    model (and every neuron set found in it) depend on how busy the machine
    was, so the default run is bounded by ``max_steps`` alone and is
    bit-reproducible.
    """

    vocab_size: int = 8000
    hidden_size: int = 192
    intermediate_size: int = 768
    num_layers: int = 6
    num_heads: int = 4
    num_kv_heads: int = 2
    seq_len: int = 256
    batch_size: int = 8
    max_steps: int = 600
    max_seconds: float | None = None
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    english_language: str = "en"
    english_weight: float = 3.0
    eval_max_tokens: int = 128
    eval_batch_size: int = 16
    tokenizer_min_frequency: int = 2
    seed: int = 0
    num_threads: int | None = None
    progress: bool = True

    @classmethod
    def tiny(cls, **overrides: Any) -> "DemoModelConfig":
        """Same recipe at toy size (seconds, not minutes) for workflow tests."""
        values: dict[str, Any] = dict(
            vocab_size=512,
            hidden_size=32,
            intermediate_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            seq_len=64,
            batch_size=8,
            max_steps=30,
            max_seconds=None,
            lr=1e-2,
            warmup_steps=3,
            eval_max_tokens=64,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "DemoModelConfig":
        """Build from a config mapping; unknown keys are an error, not ignored."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"demo model config has unknown key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**values)


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def _tokenizer_corpus(train_docs: pd.DataFrame, config: DemoModelConfig) -> Iterable[str]:
    """Training texts with English repeated ``round(english_weight)`` times."""
    for lang, texts in train_docs.groupby("language", sort=True)["text"]:
        repeats = max(1, round(config.english_weight)) if lang == config.english_language else 1
        for _ in range(repeats):
            yield from texts.tolist()


def build_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, max_length: int = 256):
    """Train a byte-level BPE and wrap it as a transformers fast tokenizer.

    Byte-level, so every script (CJK, Arabic, Devanagari ...) is covered
    without unknown tokens. The post-processor prepends ``<s>`` like Llama
    tokenizers do; ``</s>`` ends documents in training; ``<pad>`` pads.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=max_length
    )


# --------------------------------------------------------------------------
# Model, data, schedule
# --------------------------------------------------------------------------


def _build_model(config: DemoModelConfig, tokenizer) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.seq_len,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(model_config).float()


def _language_streams(train_docs: pd.DataFrame, tokenizer, min_len: int) -> dict[str, torch.Tensor]:
    """Per language, all documents tokenized as ``<s> doc </s>`` and concatenated."""
    streams: dict[str, torch.Tensor] = {}
    for lang, texts in train_docs.groupby("language", sort=True)["text"]:
        # The backend tokenizer: no per-document length warnings, and batched in Rust.
        encodings = tokenizer.backend_tokenizer.encode_batch(texts.tolist(), add_special_tokens=False)
        flat = [t for enc in encodings for t in (tokenizer.bos_token_id, *enc.ids, tokenizer.eos_token_id)]
        stream = torch.tensor(flat, dtype=torch.long)
        if len(stream) < min_len:  # tiny corpora: repeat so that a window fits
            stream = stream.repeat(math.ceil(min_len / len(stream)))
        streams[str(lang)] = stream
    return streams


def _sample_batch(
    streams: dict[str, torch.Tensor], weights: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator
) -> torch.Tensor:
    """``batch_size`` random windows; each row's language drawn by ``weights``."""
    langs = list(streams)
    choice = torch.multinomial(weights, batch_size, replacement=True, generator=gen).tolist()
    rows = []
    for c in choice:
        stream = streams[langs[c]]
        start = int(torch.randint(0, len(stream) - seq_len + 1, (1,), generator=gen))
        rows.append(stream[start : start + seq_len])
    return torch.stack(rows)


def _schedule_progress(config: DemoModelConfig, step: int, elapsed: float, budget: float | None) -> tuple[float, bool]:
    """Progress through the cosine phase, and whether the clock sets it.

    The schedule runs on an *effective step*: the larger of the real step and
    the step the time budget allows, ``elapsed / budget * max_steps``
    (``budget``: the part of ``max_seconds`` left after tokenizer training;
    ``None``: no clock). On a machine fast enough to finish ``max_steps`` in
    time the real step leads and training is bit-reproducible; on a slow or
    busy one the clock leads, so training still ends fully annealed when the
    budget runs out instead of being cut off at a high learning rate.
    """
    effective = float(step)
    if budget is not None:
        effective = max(effective, elapsed / budget * config.max_steps)
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, max(0.0, (effective - config.warmup_steps) / span))
    return progress, effective > step


def _lr_factor(config: DemoModelConfig, progress: float, step: int) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_lr_ratio``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


def evaluate_perplexity(
    model: torch.nn.Module, tokenizer, docs: pd.DataFrame, max_tokens: int = 256, batch_size: int = 16
) -> pd.DataFrame:
    """Per-language token-level perplexity of ``docs`` (columns language, text).

    Each document is scored on its first ``max_tokens`` tokens (``<s>``
    included, never predicted) by :func:`langneurons.evaluation.perplexity`.
    Loss is the mean next-token NLL over all predicted tokens of the
    language; perplexity is its exponential.
    """
    rows = []
    for lang, texts in docs.groupby("language", sort=True)["text"]:
        result = perplexity(model, tokenizer, texts.tolist(), max_length=max_tokens, batch_size=batch_size,
                            progress=False)  # fmt: skip
        rows.append((str(lang), result.n_docs, result.n_tokens, result.mean_nll, result.perplexity))
    return pd.DataFrame(rows, columns=PPL_COLUMNS)


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _check_inputs(train_docs: pd.DataFrame, eval_docs: pd.DataFrame) -> None:
    """Refuse inputs that would leak evaluation/experiment text into training."""
    for name, df in (("train_docs", train_docs), ("eval_docs", eval_docs)):
        missing = {"language", "text"} - set(df.columns)
        if missing:
            raise ValueError(f"{name} lacks column(s) {sorted(missing)}; pass a corpus DataFrame")
        if df.empty:
            raise ValueError(f"{name} is empty; sample the demo corpus with a non-empty split")
    if "split" in train_docs.columns:
        bad = sorted(set(train_docs["split"].dropna()) - {"train"})
        if bad:
            raise ValueError(
                f"train_docs contains split(s) {bad}; the demo model trains only on split 'train' so that "
                "detect/finetune/eval documents stay unseen"
            )
    overlap = set(train_docs["text"]) & set(eval_docs["text"])
    if overlap:
        raise ValueError(f"{len(overlap)} eval document(s) also occur in train_docs; splits must be disjoint")


def train_demo_model(
    train_docs: pd.DataFrame,
    eval_docs: pd.DataFrame,
    out_dir: str | os.PathLike,
    config: DemoModelConfig | None = None,
) -> pd.DataFrame:
    """Train the demo model on ``train_docs``, save it to ``out_dir``, return held-out perplexity.

    ``train_docs``/``eval_docs`` are corpus frames (columns ``language``,
    ``text``, optionally ``split``): split ``train`` and split ``eval`` of
    the demo corpus. Returns the per-language perplexity table on
    ``eval_docs`` (columns language, n_docs, n_tokens, loss, perplexity),
    also saved as ``heldout_perplexity.parquet`` in ``out_dir``.
    """
    config = config or DemoModelConfig()
    _check_inputs(train_docs, eval_docs)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    _seed_everything(config.seed)
    t_start = time.perf_counter()

    tokenizer = build_tokenizer(
        _tokenizer_corpus(train_docs, config), config.vocab_size, config.tokenizer_min_frequency, config.seq_len
    )
    streams = _language_streams(train_docs, tokenizer, config.seq_len + 1)
    weights = torch.tensor(
        [config.english_weight if lang == config.english_language else 1.0 for lang in streams], dtype=torch.float
    )
    t_tokenized = time.perf_counter()

    model = _build_model(config, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(config.seed)

    losses: list[float] = []
    stopped_by, time_led_steps = "max_steps", 0
    t_train = time.perf_counter()
    # max_seconds bounds tokenizer training + training; the schedule's clock
    # starts here, so the tokenizer's time does not count as training progress.
    budget = None if config.max_seconds is None else max(1e-6, config.max_seconds - (t_train - t_start))
    model.train()
    bar = tqdm(range(config.max_steps), desc="demo model", disable=not config.progress, dynamic_ncols=True)
    for step in bar:
        elapsed = time.perf_counter() - t_train
        if budget is not None and elapsed >= budget:
            stopped_by = "max_seconds"
            break
        progress, time_led = _schedule_progress(config, step, elapsed, budget)
        time_led_steps += int(time_led and step >= config.warmup_steps)
        lr = config.lr * _lr_factor(config, progress, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = _sample_batch(streams, weights, config.batch_size, config.seq_len, gen)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.2e}")
    bar.close()
    train_s = time.perf_counter() - t_train

    ppl = evaluate_perplexity(model, tokenizer, eval_docs, config.eval_max_tokens, config.eval_batch_size)
    log = provenance(
        dataclasses.asdict(config),
        n_params=n_params,
        steps=len(losses),
        stopped_by=stopped_by,
        schedule_time_led_steps=time_led_steps,
        tokens_seen=len(losses) * config.batch_size * config.seq_len,
        tokenizer_s=round(t_tokenized - t_start, 2),
        train_s=round(train_s, 2),
        wall_s=round(time.perf_counter() - t_start, 2),
        loss_history=[round(x, 5) for x in losses],
        train_docs_per_language={str(k): int(v) for k, v in train_docs["language"].value_counts().items()},
        heldout_perplexity=ppl.to_dict(orient="records"),
    )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        ppl.to_parquet(Path(tmp) / "heldout_perplexity.parquet", index=False)
        write_json_atomic(log, Path(tmp) / "training_log.json")
    return ppl
