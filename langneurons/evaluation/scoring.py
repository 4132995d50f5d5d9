"""Batched log-likelihoods: sequence log-probabilities, perplexity and multiple choice."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from langneurons.architectures import forward_inputs, input_device
from langneurons.batching import PADDING_SIDES, encode, pad_token_id, padded_batches, special_prefix
from langneurons.evaluation.common import (
    EvaluationError,
    _check_batch_size,
    _check_texts,
    _eval_mode,
    _resolve_max_length,
)


def sequence_logprobs(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    target_starts: Sequence[int],
    *,
    pad_id: int = 0,
    batch_size: int = 8,
    padding_side: str = "right",
    progress: bool = True,
    desc: str = "scoring",
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of ``log p(token_t | tokens_<t)`` over ``t >= target_starts[i]`` for each sequence.

    Returns (float64 sums, token counts). Target positions below 1 are
    clamped to 1: the first token has no context. Sequences are batched
    longest first (less padding); logits go to float32 before the softmax,
    and the per-sequence sums are float64.
    """
    _check_batch_size(batch_size)
    if padding_side not in PADDING_SIDES:
        raise EvaluationError(f"padding_side={padding_side!r} is unknown; use 'left' or 'right'")
    if len(sequences) != len(target_starts):
        raise EvaluationError(f"{len(sequences)} sequences but {len(target_starts)} target starts")
    sums = np.zeros(len(sequences), dtype=np.float64)
    counts = np.zeros(len(sequences), dtype=np.int64)
    if not sequences:
        return sums, counts
    device = input_device(model)
    with _eval_mode(model), tqdm(total=len(sequences), desc=desc, disable=not progress, leave=False) as bar:
        for rows, ids, mask in padded_batches(sequences, batch_size, pad_id, padding_side):
            starts = torch.tensor([max(1, int(target_starts[i])) for i in rows], dtype=torch.long)
            ids, mask = ids.to(device), mask.to(device)
            logits = model(**forward_inputs(model, ids, mask)).logits
            # predict token t from position t-1
            # log p = logit - logsumexp, in float32: no second [batch, tokens, vocab] tensor
            shifted = logits[:, :-1].float()
            targets = ids[:, 1:].to(shifted.device)
            token_lp = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(shifted, dim=-1)
            target_mask = mask[:, 1:].to(shifted.device).bool()
            real_index = (mask.cumsum(-1) - 1)[:, 1:].to(shifted.device)
            is_target = target_mask & (real_index >= starts.to(shifted.device)[:, None])
            # where(), not a product: a NaN at a padded position must not leak into the sum
            batch_sums = torch.where(is_target, token_lp, torch.zeros_like(token_lp)).double().sum(-1)
            batch_counts = is_target.sum(-1)
            sums[rows] = batch_sums.cpu().numpy()
            counts[rows] = batch_counts.cpu().numpy()
            bar.update(len(rows))
    return sums, counts


# --------------------------------------------------------------------------
# 1. Perplexity
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PerplexityResult:
    """Token-weighted held-out perplexity of one set of documents."""

    nll_sum: float
    n_tokens: int
    n_docs: int

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.n_tokens if self.n_tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll) if self.n_tokens else float("nan")

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "mean_nll": self.mean_nll, "perplexity": self.perplexity}


def perplexity(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int | None = 512,
    batch_size: int = 8,
    padding_side: str = "right",
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``texts``: ``exp(sum of token NLLs / number of predicted tokens)``.

    Each text is encoded as the tokenizer's special prefix (``<s>`` where it
    adds one) plus its tokens, truncated to ``max_length`` tokens (capped at
    the model's context); every token after the first is predicted.
    """
    texts = _check_texts(texts, "texts")
    max_length = _resolve_max_length(model, max_length)
    sequences = encode(tokenizer, texts, max_length, specials="prefix")
    sums, counts = sequence_logprobs(
        model, sequences, [1] * len(sequences), pad_id=pad_token_id(tokenizer), batch_size=batch_size,
        padding_side=padding_side, progress=progress, desc="perplexity",
    )
    return PerplexityResult(nll_sum=float(-sums.sum()), n_tokens=int(counts.sum()), n_docs=len(texts))


# --------------------------------------------------------------------------
# 2. Multiple choice by likelihood, and continuation items
# --------------------------------------------------------------------------

NORMALIZATIONS = ("sum", "mean")


def score_continuations(
    model: torch.nn.Module,
    tokenizer,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    max_length: int | None = None,
    batch_size: int = 8,
    padding_side: str = "right",
    progress: bool = True,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Log-likelihood of every choice given its context: per item (sums, token counts).

    Context and choice are encoded separately and concatenated (as
    lm-evaluation-harness does); a choice's leading whitespace belongs to
    the choice. Every choice of an item is conditioned on exactly the same
    context tokens: the whole context when the special prefix, the context
    and the *longest* choice fit in ``max_length``, otherwise the context's
    last tokens that leave room for that choice (a choice longer than
    ``max_length`` allows loses its end).
    """
    if len(contexts) != len(choices):
        raise EvaluationError(f"{len(contexts)} contexts but {len(choices)} choice lists")
    if not contexts:
        raise EvaluationError("no items to score; the data is empty")
    max_length = _resolve_max_length(model, max_length)
    prefix = special_prefix(tokenizer)
    sequences: list[list[int]] = []
    starts: list[int] = []
    owners: list[tuple[int, int]] = []
    for item, options in enumerate(choices):
        if len(options) < 2:
            raise EvaluationError(f"item {item} has {len(options)} choice(s); multiple choice needs at least 2")
    all_context_ids = encode(tokenizer, contexts, specials="none")
    flat_options = [option for options in choices for option in options]
    flat_option_ids = iter(encode(tokenizer, flat_options, max(1, max_length - len(prefix) - 1), specials="none"))
    for item, (context_ids, options) in enumerate(zip(all_context_ids, choices)):
        option_ids = [next(flat_option_ids) for _ in options]
        for k, (option, ids) in enumerate(zip(options, option_ids)):
            if not ids:
                raise EvaluationError(f"item {item} choice {k} ({option!r}) encodes to no tokens")
        # one cut per item, set by its longest choice: the choices differ only in themselves
        room = max(0, max_length - len(prefix) - max(len(ids) for ids in option_ids))
        ctx = context_ids[max(0, len(context_ids) - room) :]
        for k, ids in enumerate(option_ids):
            sequences.append(prefix + ctx + ids)
            starts.append(len(prefix) + len(ctx))
            owners.append((item, k))
    sums, counts = sequence_logprobs(
        model, sequences, starts, pad_id=pad_token_id(tokenizer), batch_size=batch_size,
        padding_side=padding_side, progress=progress, desc="choices",
    )
    item_sums = [np.zeros(len(options)) for options in choices]
    item_counts = [np.zeros(len(options), dtype=np.int64) for options in choices]
    for (item, k), value, count in zip(owners, sums, counts):
        item_sums[item][k] = value
        item_counts[item][k] = count
    return item_sums, item_counts


def _predict(sums: np.ndarray, counts: np.ndarray, normalization: str) -> int:
    """Index of the best choice; ties go to the lowest index (deterministic)."""
    scores = sums if normalization == "sum" else sums / np.maximum(counts, 1)
    return int(np.argmax(scores))


def multiple_choice(
    model: torch.nn.Module,
    tokenizer,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    labels: Sequence[int],
    *,
    normalization: str = "sum",
    max_length: int | None = None,
    batch_size: int = 8,
    padding_side: str = "right",
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of choosing the labelled choice by (summed or per-token mean) log-likelihood.

    ``value`` is the accuracy under ``normalization``; ``acc_sum`` and
    ``acc_mean`` are both reported because the sum favours short choices and
    the per-token mean does not.
    """
    if normalization not in NORMALIZATIONS:
        raise EvaluationError(f"normalization={normalization!r} is unknown; use one of {NORMALIZATIONS}")
    if len(labels) != len(contexts):
        raise EvaluationError(f"{len(contexts)} items but {len(labels)} labels")
    for item, (label, options) in enumerate(zip(labels, choices)):
        if not 0 <= int(label) < len(options):
            raise EvaluationError(f"item {item} has label {label} but only {len(options)} choices")
    item_sums, item_counts = score_continuations(
        model, tokenizer, contexts, choices, max_length=max_length, batch_size=batch_size,
        padding_side=padding_side, progress=progress,
    )
    details = []
    correct = {"sum": 0, "mean": 0}
    for item, (sums, counts, label) in enumerate(zip(item_sums, item_counts, labels)):
        predictions = {norm: _predict(sums, counts, norm) for norm in NORMALIZATIONS}
        for norm in NORMALIZATIONS:
            correct[norm] += predictions[norm] == int(label)
        details.append(
            {"item": item, "label": int(label), "pred_sum": predictions["sum"], "pred_mean": predictions["mean"],
             "logprob_sum": sums.tolist(), "n_tokens": counts.tolist()}
        )
    n = len(labels)
    return {
        "value": correct[normalization] / n,
        "n": n,
        "normalization": normalization,
        "acc_sum": correct["sum"] / n,
        "acc_mean": correct["mean"] / n,
        "chance": float(np.mean([1 / len(options) for options in choices])),
        "details": details,
    }
