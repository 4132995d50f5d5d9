"""Batched log-likelihoods: sequence log-probabilities, perplexity and multiple choice."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
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

    @classmethod
    def of_documents(cls, documents: pd.DataFrame) -> PerplexityResult:
        """The perplexity of the documents of a :func:`document_nll` table."""
        return cls(float(documents["nll"].sum()), int(documents["n_tokens"].sum()), len(documents))


def document_nll(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int | None = 512,
    batch_size: int = 8,
    padding_side: str = "right",
    progress: bool = True,
) -> pd.DataFrame:
    """Per document (``item``: its position): the summed NLL of its predicted tokens (``nll``) and their number.

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
    return pd.DataFrame({"item": np.arange(len(texts)), "nll": -sums, "n_tokens": counts})


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
    """Perplexity of ``texts``: ``exp(sum of token NLLs / number of predicted tokens)`` (see :func:`document_nll`)."""
    documents = document_nll(model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
                             padding_side=padding_side, progress=progress)  # fmt: skip
    return PerplexityResult.of_documents(documents)


# --------------------------------------------------------------------------
# 2. Multiple choice by likelihood, and continuation items
# --------------------------------------------------------------------------

NORMALIZATIONS = ("sum", "mean")


def _choice_sequences(
    tokenizer, contexts: Sequence[str], choices: Sequence[Sequence[str]], max_length: int | None
) -> tuple[list[list[int]], list[int], list[tuple[int, int]]]:
    """Every choice as ``prefix + context + choice`` ids, where its tokens start, and its (item, choice).

    Each item's context is cut once, by its longest choice, and only when
    it does not fit (``max_length`` None: never).
    """
    if len(contexts) != len(choices):
        raise EvaluationError(f"{len(contexts)} contexts but {len(choices)} choice lists")
    if not contexts:
        raise EvaluationError("no items to score; the data is empty")
    for item, options in enumerate(choices):
        if len(options) < 2:
            raise EvaluationError(f"item {item} has {len(options)} choice(s); multiple choice needs at least 2")
    prefix = special_prefix(tokenizer)
    choice_budget = None if max_length is None else max(1, max_length - len(prefix) - 1)
    flat_choices = [option for options in choices for option in options]
    choice_ids = iter(encode(tokenizer, flat_choices, choice_budget, specials="none"))
    sequences: list[list[int]] = []
    starts: list[int] = []
    owners: list[tuple[int, int]] = []
    for item, (context_ids, options) in enumerate(zip(encode(tokenizer, contexts, specials="none"), choices)):
        option_ids = [next(choice_ids) for _ in options]
        for k, (option, ids) in enumerate(zip(options, option_ids)):
            if not ids:
                raise EvaluationError(f"item {item} choice {k} ({option!r}) encodes to no tokens")
        if max_length is not None:
            # one cut per item, set by its longest choice: the choices differ only in themselves
            room = max(0, max_length - len(prefix) - max(len(ids) for ids in option_ids))
            context_ids = context_ids[max(0, len(context_ids) - room) :]
        for k, ids in enumerate(option_ids):
            sequences.append(prefix + context_ids + ids)
            starts.append(len(prefix) + len(context_ids))
            owners.append((item, k))
    return sequences, starts, owners


def _per_item(owners: Sequence[tuple[int, int]], values: Sequence, choices: Sequence[Sequence[str]], dtype) -> list:
    """Flat per-choice values back into one array per item."""
    out = [np.zeros(len(options), dtype=dtype) for options in choices]
    for (item, k), value in zip(owners, values):
        out[item][k] = value
    return out


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
    and the *longest* choice fit in ``max_length`` (None: the model's
    context), otherwise the context's last tokens that leave room for the
    longest choice (a choice longer than ``max_length`` allows loses its end).
    """
    sequences, starts, owners = _choice_sequences(tokenizer, contexts, choices, _resolve_max_length(model, max_length))
    sums, counts = sequence_logprobs(
        model, sequences, starts, pad_id=pad_token_id(tokenizer), batch_size=batch_size,
        padding_side=padding_side, progress=progress, desc="choices",
    )
    return _per_item(owners, sums, choices, np.float64), _per_item(owners, counts, choices, np.int64)


def uniform_chance(
    token_counts: Sequence[Sequence[int]], labels: Sequence[int], normalization: str = "sum"
) -> np.ndarray:
    """Per item, the expected accuracy of a model that knows nothing: a uniform next-token distribution.

    Such a model gives a choice of n tokens the log-likelihood ``-n log V``:
    under ``"sum"`` it picks the choices with the fewest tokens, under
    ``"mean"`` all choices tie. Ties are split evenly, so an item scores
    1/(number of best choices) when its label is among them, else 0. The
    mean over items is the chance level an item set really has; it is 1/k
    only when the token counts say nothing about the answer.
    """
    if normalization not in NORMALIZATIONS:
        raise EvaluationError(f"normalization={normalization!r} is unknown; use one of {NORMALIZATIONS}")
    if len(token_counts) != len(labels):
        raise EvaluationError(f"{len(token_counts)} items but {len(labels)} labels")
    chance = np.zeros(len(labels))
    for item, (counts, label) in enumerate(zip(token_counts, labels)):
        counts = np.asarray(counts)
        best = counts == counts.min() if normalization == "sum" else np.ones(len(counts), dtype=bool)
        chance[item] = best[int(label)] / best.sum()
    return chance


def chance_level(
    tokenizer,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    labels: Sequence[int],
    *,
    normalization: str = "sum",
    max_length: int | None = None,
) -> np.ndarray:
    """Per item, the chance level (:func:`uniform_chance`) of multiple-choice items as they would be scored.

    Needs no model: the token counts are those :func:`score_continuations`
    scores (``max_length`` as there; None: no cut). The mean is the item
    set's measured chance level, to report next to its accuracy.
    """
    sequences, starts, owners = _choice_sequences(tokenizer, contexts, choices, max_length)
    counts = [len(sequence) - max(1, start) for sequence, start in zip(sequences, starts)]  # as sequence_logprobs
    return uniform_chance(_per_item(owners, counts, choices, np.int64), labels, normalization)


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
    the per-token mean does not. ``chance`` is the measured chance level
    under ``normalization`` (:func:`uniform_chance` of the scored token
    counts), ``chance_nominal`` the mean of 1/k. ``per_item`` holds each
    item's hit (``value``, 0 or 1) and chance.
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
    correct = {norm: np.zeros(len(labels)) for norm in NORMALIZATIONS}
    for item, (sums, counts, label) in enumerate(zip(item_sums, item_counts, labels)):
        predictions = {norm: _predict(sums, counts, norm) for norm in NORMALIZATIONS}
        for norm in NORMALIZATIONS:
            correct[norm][item] = predictions[norm] == int(label)
        details.append(
            {"item": item, "label": int(label), "pred_sum": predictions["sum"], "pred_mean": predictions["mean"],
             "logprob_sum": sums.tolist(), "n_tokens": counts.tolist()}
        )
    chance = uniform_chance(item_counts, labels, normalization)
    return {
        "value": float(correct[normalization].mean()),
        "n": len(labels),
        "normalization": normalization,
        "acc_sum": float(correct["sum"].mean()),
        "acc_mean": float(correct["mean"].mean()),
        "chance": float(chance.mean()),
        "chance_nominal": float(np.mean([1 / len(options) for options in choices])),
        "per_item": pd.DataFrame({"item": np.arange(len(labels)), "value": correct[normalization], "chance": chance}),
        "details": details,
    }
