"""Evaluation harness: every metric, every language, under any deactivation.

The ablation grid (method.md section 6.2) deactivates a neuron set and then
evaluates *every* language on *every* metric; targeted fine-tuning is judged
by the same metrics. This module therefore only runs the model: the caller
wraps a call in ``with deactivate(model, neurons):`` and the hooks act on the
forward passes made here.

Metrics (all reachable through :func:`evaluate` / :data:`METRICS`):

``perplexity``
    Token-weighted held-out perplexity: ``exp(sum NLL / n tokens)`` over all
    documents of one language (not a mean of per-document perplexities,
    which would over-weight short documents).
``continuation``
    Multiple-choice continuation of held-out passages (first sentences as
    context, the true next sentences against 3 distractor continuations),
    built by :func:`build_continuation_items` so that the items are parallel
    across languages; chosen by continuation log-likelihood.
``fidelity``
    Greedy continuations of prompts in language L; the share that py3langid
    identifies as L (the paper's "generation collapses" effect, measured
    without a benchmark).
``mgsm``, ``xquad``, ``xcopa``, ``xcsqa``, ``xlsum``
    The paper's benchmarks, from the Hugging Face hub or from local files in
    the same formats (and the local formats of the project's shared data).

Correctness rules that every metric follows:

* batched with explicit padding masks; scoring passes position ids derived
  from the mask, so results do not depend on batch size or padding side;
* ``torch.no_grad()``, the model in eval mode (restored afterwards);
* inputs go to the device of the input embeddings (works with
  ``device_map`` dispatch); log-probabilities are computed in float32 and
  summed in float64; one host transfer per batch, never per token;
* all scores are fractions in [0, 1] (accuracy, F1, ROUGE-L F, exact match,
  share), except perplexity.

Bad input raises :class:`EvaluationError` (a ``ValueError``) naming what is
wrong and how to fix it; a metric called without the data it needs raises
:class:`MissingDataError`.
"""

from __future__ import annotations

import csv
import functools
import inspect
import json
import math
import re
import unicodedata
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from langneurons.architectures import forward_inputs, input_device

__all__ = [
    "BENCHMARKS",
    "METRICS",
    "EvaluationError",
    "MissingDataError",
    "Metric",
    "PerplexityResult",
    "RougeScore",
    "build_continuation_items",
    "continuation",
    "evaluate",
    "exact_match",
    "extract_number",
    "fidelity",
    "greedy_generate",
    "identify_languages",
    "load_benchmark",
    "load_documents",
    "mgsm",
    "multiple_choice",
    "normalize_answer",
    "normalize_language",
    "perplexity",
    "results_table",
    "rouge_l",
    "score_continuations",
    "sentence_boundaries",
    "sequence_logprobs",
    "token_f1",
    "xcopa",
    "xcsqa",
    "xlsum",
    "xquad",
]


class EvaluationError(ValueError):
    """Bad evaluation input; the message names the field, the value and the fix."""


class MissingDataError(EvaluationError):
    """A metric was called without the data it needs."""


# --------------------------------------------------------------------------
# Language codes and language identification
# --------------------------------------------------------------------------

#: ISO 639-2/3 codes (and a few common names) -> the ISO 639-1 code that
#: py3langid, the benchmarks and the corpus use. Script/region suffixes
#: ("zh-Hans", "zh_CN", "zho_Hans", "swh_Latn") are stripped first.
ISO_ALIASES: dict[str, str] = {
    "eng": "en", "deu": "de", "ger": "de", "fra": "fr", "fre": "fr", "spa": "es", "rus": "ru",
    "zho": "zh", "chi": "zh", "cmn": "zh", "jpn": "ja", "jap": "ja", "tha": "th", "ara": "ar",
    "arb": "ar", "swa": "sw", "swh": "sw", "vie": "vi", "ita": "it", "por": "pt", "nld": "nl",
    "dut": "nl", "pol": "pl", "tur": "tr", "hin": "hi", "ben": "bn", "tel": "te", "tam": "ta",
    "urd": "ur", "ind": "id", "kor": "ko", "ell": "el", "gre": "el", "ron": "ro", "rum": "ro",
    "est": "et", "hat": "ht", "que": "qu", "ukr": "uk", "fas": "fa", "pes": "fa", "per": "fa",
    "heb": "he",
}
#: py3langid labels folded onto the language they are a variety of.
LABEL_ALIASES: dict[str, str] = {"arz": "ar", "ary": "ar"}
#: Label for a text with nothing to identify (empty generation).
UNDETERMINED = "und"


def normalize_language(code: str) -> str:
    """'zh-Hans', 'zh_CN', 'zho_Hans', 'ZH', 'jap' -> 'zh' / 'ja': one code per language everywhere."""
    if not isinstance(code, str) or not code.strip():
        raise EvaluationError(f"language code {code!r} is not a non-empty string; use an ISO 639-1 code such as 'fr'")
    base = re.split(r"[-_]", code.strip(), maxsplit=1)[0].lower()
    return ISO_ALIASES.get(base, base)


@functools.lru_cache(maxsize=1)
def _langid_model_labels() -> tuple[str, ...]:
    return tuple(_new_identifier().labels)


def _new_identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    if hasattr(LanguageIdentifier, "from_model_file"):
        return LanguageIdentifier.from_model_file(MODEL_FILE)
    return LanguageIdentifier.from_pickled_model(MODEL_FILE)  # older py3langid releases


@functools.lru_cache(maxsize=16)
def _identifier(languages: tuple[str, ...] | None):
    """A private identifier restricted to ``languages``.

    Private, because ``py3langid.langid.set_languages`` would restrict the
    module-global identifier that the corpus filters also use.
    """
    identifier = _new_identifier()
    if languages is not None:
        identifier.set_languages(list(languages))
    return identifier


def _check_langid_languages(languages: Sequence[str] | None) -> tuple[str, ...] | None:
    if languages is None:
        return None
    codes = tuple(sorted({normalize_language(code) for code in languages}))
    known = set(_langid_model_labels())
    unknown = [code for code in codes if code not in known]
    if unknown:
        raise EvaluationError(
            f"language code(s) {unknown} are unknown to py3langid, so generation fidelity cannot be measured "
            f"for them; py3langid knows {', '.join(sorted(known))}. Use ISO 639-1 codes (e.g. 'zh', 'sw') "
            "or drop these languages from the fidelity metric"
        )
    if not codes:
        raise EvaluationError("languages is empty; pass the experiment's language list (or None for all)")
    return codes


def identify_languages(texts: Sequence[str], languages: Sequence[str] | None = None) -> list[str]:
    """py3langid label of each text, restricted to ``languages`` (None: all it knows).

    Restricting to the experiment's languages matters: on short generations
    an unrestricted classifier confuses close languages (es/gl, sw/rw), which
    would count as infidelity that no neuron caused. Texts without letters
    or digits get :data:`UNDETERMINED`.
    """
    identifier = _identifier(_check_langid_languages(languages))
    labels = []
    for text in texts:
        if not any(ch.isalnum() for ch in text):
            labels.append(UNDETERMINED)
            continue
        label, _score = identifier.classify(text)
        labels.append(LABEL_ALIASES.get(label, label))
    return labels


# --------------------------------------------------------------------------
# Tokens, padding, batched log-likelihoods
# --------------------------------------------------------------------------


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _encode_many(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of many texts without special tokens, in one (fast, batched) tokenizer call."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


@functools.lru_cache(maxsize=8)
def _special_prefix_cached(tokenizer) -> tuple[int, ...]:
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    without = _encode(tokenizer, "a")
    for start in range(len(with_special) - len(without) + 1):
        if with_special[start : start + len(without)] == without:
            return tuple(with_special[:start])
    return ()


def _special_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts *before* a text (e.g. ``<s>``), never a suffix.

    Texts are encoded as prefix + ids-without-specials so that a tokenizer
    that appends ``</s>`` cannot end a context or a prompt early.
    """
    try:
        return list(_special_prefix_cached(tokenizer))
    except TypeError:  # unhashable tokenizer
        return list(_special_prefix_cached.__wrapped__(tokenizer))


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _pad(sequences: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence on ``side``; returns ids and the 0/1 attention mask."""
    if side not in ("left", "right"):
        raise EvaluationError(f"padding_side={side!r} is unknown; use 'left' or 'right'")
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            continue
        where = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, where] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, where] = 1
    return ids, mask


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EvaluationError(f"batch_size={batch_size!r} must be a positive integer")


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
    if len(sequences) != len(target_starts):
        raise EvaluationError(f"{len(sequences)} sequences but {len(target_starts)} target starts")
    sums = np.zeros(len(sequences), dtype=np.float64)
    counts = np.zeros(len(sequences), dtype=np.int64)
    if not sequences:
        return sums, counts
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    device = input_device(model)
    with _eval_mode(model), tqdm(total=len(sequences), desc=desc, disable=not progress, leave=False) as bar:
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            ids, mask = _pad([sequences[i] for i in rows], pad_id, padding_side)
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


def _model_max_length(model: torch.nn.Module, default: int = 2048) -> int:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def _resolve_max_length(model: torch.nn.Module, max_length: int | None) -> int:
    limit = _model_max_length(model)
    if max_length is None:
        return limit
    if not isinstance(max_length, int) or max_length < 2:
        raise EvaluationError(f"max_length={max_length!r} must be an integer >= 2")
    return min(max_length, limit)


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


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise EvaluationError(f"{what} must be a sequence of strings, not one string")
    texts = list(texts)
    if not texts:
        raise EvaluationError(f"{what} is empty; pass at least one text")
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad:
        raise EvaluationError(f"{what} has non-string entries at positions {bad[:5]}")
    return texts


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
    prefix = _special_prefix(tokenizer)
    sequences = [(prefix + ids)[:max_length] for ids in _encode_many(tokenizer, texts)]
    sums, counts = sequence_logprobs(
        model, sequences, [1] * len(sequences), pad_id=_pad_id(tokenizer), batch_size=batch_size,
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
    lm-evaluation-harness does), so every choice of an item is conditioned
    on exactly the same context tokens. A choice's leading whitespace
    belongs to the choice. Too long inputs lose the start of the context
    (after the special prefix), then the end of the choice.
    """
    if len(contexts) != len(choices):
        raise EvaluationError(f"{len(contexts)} contexts but {len(choices)} choice lists")
    if not contexts:
        raise EvaluationError("no items to score; the data is empty")
    max_length = _resolve_max_length(model, max_length)
    prefix = _special_prefix(tokenizer)
    sequences: list[list[int]] = []
    starts: list[int] = []
    owners: list[tuple[int, int]] = []
    for item, (context, options) in enumerate(zip(contexts, choices)):
        if len(options) < 2:
            raise EvaluationError(f"item {item} has {len(options)} choice(s); multiple choice needs at least 2")
        context_ids = _encode(tokenizer, context)
        for k, option in enumerate(options):
            option_ids = _encode(tokenizer, option)[: max(1, max_length - len(prefix) - 1)]
            if not option_ids:
                raise EvaluationError(f"item {item} choice {k} ({option!r}) encodes to no tokens")
            room = max_length - len(prefix) - len(option_ids)
            ctx = context_ids[len(context_ids) - room :] if room > 0 else []
            sequences.append(prefix + ctx + option_ids)
            starts.append(len(prefix) + len(ctx))
            owners.append((item, k))
    sums, counts = sequence_logprobs(
        model, sequences, starts, pad_id=_pad_id(tokenizer), batch_size=batch_size,
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


# Sentence ends: terminal punctuation followed by whitespace (optionally after
# closing quotes/brackets), or CJK full-width terminators (no space follows them).
_SENTENCE_END = re.compile(
    r"[.!?\u061f\u06d4\u0964\u0965\u1362\u104b]+[\"'\u201d\u2019\u00bb)\]]*(?=\s)"
    r"|[\u3002\uff01\uff1f]+[\u300d\u300f\u201d\u2019\uff09)]*"
)
#: Languages whose sentences are separated by spaces, not punctuation.
_SPACE_SEPARATED_SENTENCES = frozenset({"th", "lo"})


def sentence_boundaries(text: str, language: str) -> list[int]:
    """Character offsets where sentences end (exclusive), in order; the text end is the last.

    A light rule-based splitter (no model, same rule for every language):
    Latin/Cyrillic/Arabic/Devanagari terminators followed by whitespace, CJK
    full-width terminators anywhere; Thai, which has no sentence
    punctuation, at whitespace runs. Whitespace after a boundary belongs to
    the next sentence, so a continuation keeps its leading separator.
    """
    end = len(text.rstrip())
    if normalize_language(language) in _SPACE_SEPARATED_SENTENCES:
        cuts = [m.start() for m in re.finditer(r"\s+", text)]
    else:
        cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    cuts = [c for c in cuts if 0 < c < end]
    return sorted(set(cuts)) + [end] if end > 0 else []


ITEM_COLUMNS = ["item_id", "language", "key", "context", "choices", "label", "choice_keys"]


def _split_document(text: str, language: str, context_sentences: int, continuation_sentences: int):
    """(context, continuation) of one document, or None when it has too few sentences."""
    cuts = sentence_boundaries(text, language)
    if len(cuts) < context_sentences + continuation_sentences:
        return None
    cut = cuts[context_sentences - 1]
    return text[:cut], text[cut : cuts[context_sentences + continuation_sentences - 1]]


DISTRACTORS = ("documents", "swapped")


def _order_units(text: str) -> tuple[str, list[str], str]:
    """(leading whitespace, units, joiner): words where the text has spaces, else characters (zh, ja, th)."""
    body = text.lstrip()
    lead = text[: len(text) - len(body)]
    words = body.split()
    if len(words) >= 4:
        return lead, words, " "
    return lead, [c for c in body if not c.isspace()], ""


def _swapped_versions(text: str, count: int, swaps: int, rng: np.random.Generator) -> list[str] | None:
    """``count`` distinct versions of ``text`` with ``swaps`` random pairs of neighbouring units exchanged.

    None when the text has fewer than 4 units or no such versions can be found.
    """
    lead, units, joiner = _order_units(text)
    original = lead + joiner.join(units)
    if len(units) < 4:
        return None
    found: list[str] = []
    for _ in range(50 * count):
        changed = list(units)
        for _ in range(swaps):
            i = int(rng.integers(len(changed) - 1))
            changed[i], changed[i + 1] = changed[i + 1], changed[i]
        candidate = lead + joiner.join(changed)
        if candidate != original and candidate not in found:
            found.append(candidate)
            if len(found) == count:
                return found
    return None


def _select_docs(docs: pd.DataFrame, split: str | None, what: str) -> pd.DataFrame:
    if not isinstance(docs, pd.DataFrame):
        raise EvaluationError(f"{what} must be a DataFrame with columns language, text (a corpus table)")
    missing = {"language", "text"} - set(docs.columns)
    if missing:
        raise EvaluationError(f"{what} lacks column(s) {sorted(missing)}; pass a corpus table (read_corpus)")
    if split is not None and "split" in docs.columns:
        docs = docs[docs["split"] == split]
        if docs.empty:
            raise EvaluationError(f"{what} has no documents of split {split!r}; pass split=None to use all rows")
    if docs.empty:
        raise EvaluationError(f"{what} is empty")
    docs = docs.copy()
    docs["language"] = docs["language"].map(normalize_language)
    return docs


def build_continuation_items(
    docs: pd.DataFrame,
    n_items: int,
    seed: int,
    n_choices: int = 4,
    *,
    context_sentences: int = 3,
    continuation_sentences: int = 2,
    split: str | None = "eval",
    languages: Sequence[str] | None = None,
    aligned: bool | None = None,
    distractors: str = "documents",
    swaps: int = 2,
) -> pd.DataFrame:
    """Multiple-choice continuation items, parallel across languages.

    Each eligible document is split into its first ``context_sentences``
    sentences (the context) and the next ``continuation_sentences`` (the
    true continuation). With ``distractors="documents"`` the wrong choices
    are the continuations of other documents of the same language at the
    same sentence positions, so all choices are fluent text of the right
    language and similar length: this asks for topical coherence, which a
    small model may lack. With ``"swapped"`` they are the true continuation
    with ``swaps`` seeded random pairs of neighbouring words (characters in
    languages written without spaces) exchanged: nearly the same tokens, so
    only local word order tells them apart, which a model that has learnt
    the language can do (the 5M-parameter demo model scores 0.63-0.90 with
    the default 2 swaps, chance 0.25). Their ``choice_keys`` are
    ``<key>#swapped<j>``.

    Aligned corpora (every row has an ``align_key``, the default when so):
    a key is eligible only if its document splits in *every* language, and
    one seeded draw (NumPy ``default_rng(seed)``) over the sorted eligible
    keys picks the item keys, the distractor keys and the position of the
    true answer. The items are thus the same in every language: same keys,
    same distractor keys, same label. Unaligned corpora use ``doc_id`` (or
    the row order) as key, one language at a time, with the same seed.

    Returns a DataFrame with :data:`ITEM_COLUMNS` (``choices`` and
    ``choice_keys`` are lists). Asking for more items than there are
    eligible keys gives all of them, with a warning.
    """
    if not isinstance(n_items, int) or n_items < 1:
        raise EvaluationError(f"n_items={n_items!r} must be a positive integer")
    if not isinstance(n_choices, int) or n_choices < 2:
        raise EvaluationError(f"n_choices={n_choices!r} must be an integer >= 2")
    if context_sentences < 1 or continuation_sentences < 1:
        raise EvaluationError("context_sentences and continuation_sentences must be >= 1")
    if distractors not in DISTRACTORS:
        raise EvaluationError(f"distractors={distractors!r}; use one of {', '.join(DISTRACTORS)}")
    docs = _select_docs(docs, split, "docs")
    if languages is not None:
        wanted = [normalize_language(code) for code in languages]
        absent = sorted(set(wanted) - set(docs["language"]))
        if absent:
            raise EvaluationError(
                f"docs has no documents of language(s) {absent}; it has {sorted(set(docs['language']))}"
            )
        docs = docs[docs["language"].isin(wanted)]
    has_keys = "align_key" in docs.columns and docs["align_key"].notna().all()
    if aligned is None:
        aligned = has_keys
    if aligned and not has_keys:
        raise EvaluationError("aligned=True needs an align_key on every document; pass aligned=False")

    def keyed(frame: pd.DataFrame) -> dict[str, str]:
        if aligned:
            keys = frame["align_key"].astype(str)
        elif "doc_id" in frame.columns:
            keys = frame["doc_id"].astype(str)
        else:
            keys = pd.Series([str(i) for i in range(len(frame))], index=frame.index)
        duplicated = sorted(set(keys[keys.duplicated()]))
        if duplicated:
            raise EvaluationError(
                f"language {frame['language'].iloc[0]!r} has several documents with key(s) {duplicated[:5]}; "
                "keys must be unique per language"
            )
        return dict(zip(keys, frame["text"]))

    by_language = {lang: keyed(frame) for lang, frame in docs.groupby("language", sort=True)}
    splits = {
        lang: {
            key: parts
            for key, text in texts.items()
            if (parts := _split_document(text, lang, context_sentences, continuation_sentences)) is not None
        }
        for lang, texts in by_language.items()
    }
    shuffles: dict[str, dict[str, list[str]]] = {}  # language -> key -> wrong choices
    if distractors == "swapped":
        if not isinstance(swaps, int) or swaps < 1:
            raise EvaluationError(f"swaps={swaps!r} must be a positive integer")
        for lang, parts in splits.items():
            shuffles[lang] = {}
            for key, (_, true) in parts.items():
                rng = np.random.default_rng([seed, zlib.crc32(f"{lang}\x1f{key}".encode())])
                versions = _swapped_versions(true, n_choices - 1, swaps, rng)
                if versions is not None:
                    shuffles[lang][key] = versions
            splits[lang] = {key: value for key, value in parts.items() if key in shuffles[lang]}
    groups = [list(splits)] if aligned else [[lang] for lang in splits]
    frames = []
    for group in groups:
        eligible = sorted(set.intersection(*(set(splits[lang]) for lang in group)))
        if len(eligible) < n_choices:
            raise EvaluationError(
                f"only {len(eligible)} document(s) of language(s) {group} have at least "
                f"{context_sentences + continuation_sentences} sentences"
                + (" in every language" if aligned else "")
                + f"; {n_choices} choices need at least {n_choices}. Use more documents or fewer sentences"
            )
        if n_items > len(eligible):
            warnings.warn(
                f"n_items={n_items} but only {len(eligible)} eligible documents for {group}; using all of them",
                stacklevel=2,
            )
        rng = np.random.default_rng(seed)
        picks = rng.permutation(len(eligible))[: min(n_items, len(eligible))]
        plan = []
        for pick in picks:
            others = [i for i in range(len(eligible)) if i != pick]
            wrong_picks = rng.choice(others, size=n_choices - 1, replace=False)
            label = int(rng.integers(n_choices))
            order = [int(i) for i in wrong_picks]
            order.insert(label, int(pick))
            plan.append((eligible[pick], label, [eligible[i] for i in order]))
        for lang in group:
            rows = []
            for key, label, choice_keys in plan:
                if distractors == "swapped":
                    wrong = iter(shuffles[lang][key])
                    choice_keys = [key if i == label else f"{key}#swapped{i}" for i in range(n_choices)]
                    choices = [splits[lang][key][1] if i == label else next(wrong) for i in range(n_choices)]
                else:
                    choices = [splits[lang][k][1] for k in choice_keys]
                rows.append((key, lang, key, splits[lang][key][0], choices, label, choice_keys))
            frames.append(pd.DataFrame(rows, columns=ITEM_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def continuation(
    model: torch.nn.Module,
    tokenizer,
    items: pd.DataFrame,
    language: str,
    *,
    normalization: str = "sum",
    max_length: int | None = 512,
    batch_size: int = 8,
    padding_side: str = "right",
    progress: bool = True,
) -> dict[str, Any]:
    """Continuation accuracy of ``language`` on items from :func:`build_continuation_items`."""
    missing = {"language", "context", "choices", "label"} - set(items.columns)
    if missing:
        raise EvaluationError(
            f"continuation items lack column(s) {sorted(missing)}; build them with build_continuation_items"
        )
    language = normalize_language(language)
    mine = items[items["language"].map(normalize_language) == language]
    if mine.empty:
        raise EvaluationError(
            f"no continuation items for language {language!r}; the items have {sorted(set(items['language']))}"
        )
    result = multiple_choice(
        model, tokenizer, mine["context"].tolist(), [list(c) for c in mine["choices"]], mine["label"].tolist(),
        normalization=normalization, max_length=max_length, batch_size=batch_size, padding_side=padding_side,
        progress=progress,
    )
    for detail, key in zip(result["details"], mine["key"] if "key" in mine.columns else mine.index):
        detail["key"] = key
    return result


# --------------------------------------------------------------------------
# 3. Greedy generation and language fidelity
# --------------------------------------------------------------------------


#: Neutral values for every setting that would make decoding other than plain greedy. ``generate``
#: fills each *unset* field from the model's own generation config (a checkpoint may ship
#: temperature, top_p or a repetition penalty), so they are set explicitly.
_PLAIN_GREEDY = dict(
    do_sample=False, num_beams=1, num_return_sequences=1, temperature=1.0, top_k=50, top_p=1.0, typical_p=1.0,
    epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0,
    min_length=0,
)


def _greedy_config(max_new_tokens: int, pad_id: int, eos_ids: list[int]):
    """A plain greedy generation config: ``max_new_tokens`` new tokens, stopping at any of ``eos_ids``."""
    from transformers import GenerationConfig

    return GenerationConfig(
        **_PLAIN_GREEDY, max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_ids or None,
    )


def _eos_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    ids: list[int] = []
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        for value in source if isinstance(source, (list, tuple)) else [source]:
            if value is not None and int(value) not in ids:
                ids.append(int(value))
    return ids


def _cut_at_stops(text: str, stop: Sequence[str]) -> str:
    positions = [text.find(s) for s in stop if s and s in text]
    return text[: min(positions)] if positions else text


def _prompt_ids(tokenizer, prompt: str | Sequence[int], max_prompt_tokens: int) -> list[int]:
    """A prompt as ids: strings get the special prefix; too long prompts keep their end."""
    if isinstance(prompt, str):
        prefix = _special_prefix(tokenizer)
        body = _encode(tokenizer, prompt)
        keep = max(1, max_prompt_tokens - len(prefix))
        return prefix + body[-keep:]
    ids = [int(t) for t in prompt]
    return ids[-max_prompt_tokens:]


def greedy_generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_prompt_tokens: int | None = None,
    stop: Sequence[str] = (),
    progress: bool = True,
) -> list[str]:
    """Greedy continuations (new text only) of ``prompts``, batched with left padding.

    Left padding puts every prompt's last token at the same column, which
    batched decoding needs; ``generate`` derives position ids from the
    attention mask, so padding does not change the result. Text after the
    first ``eos`` is dropped, then text from the first ``stop`` string on.
    The output tensor of a batch is moved to the host once.
    """
    if isinstance(prompts, str):
        raise EvaluationError("prompts must be a sequence of prompts, not one string")
    if not prompts:
        raise EvaluationError("prompts is empty; pass at least one prompt")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise EvaluationError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    _check_batch_size(batch_size)
    limit = _model_max_length(model)
    if max_prompt_tokens is None:
        max_prompt_tokens = max(1, limit - max_new_tokens)
    encoded = [_prompt_ids(tokenizer, prompt, max_prompt_tokens) for prompt in prompts]
    if any(not ids for ids in encoded):
        raise EvaluationError("a prompt encodes to no tokens; prompts must not be empty")
    pad_id = _pad_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    device = input_device(model)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    with _eval_mode(model), tqdm(total=len(encoded), desc="generating", disable=not progress, leave=False) as bar:
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            ids, mask = _pad([encoded[i] for i in rows], pad_id, "left")
            config = _greedy_config(max_new_tokens, pad_id, eos)
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
            new_tokens = generated[:, ids.shape[1] :].cpu().tolist()
            for row, tokens in zip(rows, new_tokens):
                cut = next((j for j, t in enumerate(tokens) if t in eos), len(tokens))
                text = tokenizer.decode(tokens[:cut], skip_special_tokens=True)
                outputs[row] = _cut_at_stops(text, stop)
            bar.update(len(rows))
    return outputs


def fidelity(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    language: str,
    *,
    languages: Sequence[str] | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Share of greedy continuations of ``prompts`` that py3langid identifies as ``language``.

    Only the generated text is classified, never the prompt. ``languages``
    restricts the identifier (pass the experiment's language set; None uses
    every language py3langid knows). Empty continuations count as not in
    ``language``.
    """
    language = normalize_language(language)
    codes = _check_langid_languages(languages)
    _check_langid_languages([language])
    if codes is not None and language not in codes:
        raise EvaluationError(f"language {language!r} is not in languages={list(codes)}; add it")
    texts = greedy_generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
    labels = identify_languages(texts, codes)
    hits = [label == language for label in labels]
    counts = pd.Series(labels).value_counts()
    return {
        "value": float(np.mean(hits)),
        "n": len(texts),
        "n_empty": int(sum(not t.strip() for t in texts)),
        "top_other": next((str(lab) for lab in counts.index if lab != language), None),
        "details": [
            {"item": i, "prompt": _prompt_text(tokenizer, p), "text": t, "label": lab}
            for i, (p, t, lab) in enumerate(zip(prompts, texts, labels))
        ],
    }


def _prompt_text(tokenizer, prompt: str | Sequence[int]) -> str:
    return prompt if isinstance(prompt, str) else tokenizer.decode(list(prompt), skip_special_tokens=True)


def _doc_prompts(
    tokenizer, docs: pd.DataFrame, language: str, prompt_tokens: int, limit: int | None
) -> list[list[int]]:
    """The first ``prompt_tokens`` tokens (after the special prefix) of each document of ``language``."""
    mine = docs[docs["language"] == normalize_language(language)]
    if mine.empty:
        raise EvaluationError(f"data has no documents of language {language!r}; it has {sorted(set(docs['language']))}")
    if limit is not None:
        mine = mine.iloc[:limit]
    prefix = _special_prefix(tokenizer)
    return [prefix + ids[:prompt_tokens] for ids in _encode_many(tokenizer, mine["text"].tolist())]


# --------------------------------------------------------------------------
# Answer scoring: exact match, token F1, ROUGE-L, numbers
# --------------------------------------------------------------------------

#: Scripts without spaces between words: scored on characters.
CHARACTER_LEVEL_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "yue", "wuu"})
#: Articles removed before comparing answers (SQuAD for en, MLQA for es/de/vi).
_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
}


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


def normalize_answer(text: str, language: str = "en") -> str:
    """SQuAD normalisation, made multilingual: NFKC, lower case, no punctuation/symbols, no articles, one space."""
    language = normalize_language(language)
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if _is_punctuation(ch) else ch for ch in text)
    if language in _ARTICLES:
        text = re.sub(_ARTICLES[language], " ", text)
    return " ".join(text.split())


def _answer_tokens(text: str, language: str) -> list[str]:
    normalized = normalize_answer(text, language)
    if normalize_language(language) in CHARACTER_LEVEL_LANGUAGES:
        return [ch for ch in normalized if not ch.isspace()]
    return normalized.split()


def exact_match(prediction: str, references: str | Sequence[str], language: str = "en") -> float:
    """1.0 if the normalised prediction equals any normalised reference."""
    refs = [references] if isinstance(references, str) else list(references)
    pred = normalize_answer(prediction, language)
    return float(any(pred == normalize_answer(ref, language) for ref in refs))


def token_f1(prediction: str, references: str | Sequence[str], language: str = "en") -> float:
    """SQuAD token F1 (bag-of-tokens overlap), the maximum over references.

    Tokens are whitespace words after :func:`normalize_answer`, except for
    Chinese, Japanese, Thai (and other scripts in
    :data:`CHARACTER_LEVEL_LANGUAGES`), which write words without spaces:
    there a whitespace "token" is a whole clause and F1 would degenerate to
    exact match, so characters are the tokens (as MLQA's evaluation does for
    Chinese), which needs no word segmenter and its errors.
    """
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise EvaluationError("token_f1 needs at least one reference answer")
    pred = _answer_tokens(prediction, language)
    best = 0.0
    for ref in refs:
        gold = _answer_tokens(ref, language)
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common == 0:
            continue
        precision, recall = common / len(pred), common / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


@dataclass(frozen=True)
class RougeScore:
    precision: float
    recall: float
    fmeasure: float


def rouge_tokens(text: str, language: str = "en") -> list[str]:
    """ROUGE tokens: lower-cased words split at whitespace and punctuation; characters for CJK/Thai.

    Why not ``rouge-score``'s tokenizer: it keeps only ``[a-z0-9]``, so any
    Cyrillic, Arabic, Devanagari or CJK summary tokenises to nothing and
    scores 0. Splitting at whitespace (not ``\\w``) keeps the combining marks
    of Indic scripts inside their words. Chinese, Japanese and Thai write
    words without spaces, so characters are their tokens (a character LCS
    needs no segmenter); this makes their scores comparable with each
    other, not with the word-level scores of other languages.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    if normalize_language(language) in CHARACTER_LEVEL_LANGUAGES:
        return [ch for ch in text if not ch.isspace() and not _is_punctuation(ch)]
    return "".join(" " if _is_punctuation(ch) else ch for ch in text).split()


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (one-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(row[j], row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(prediction: str, reference: str, language: str = "en") -> RougeScore:
    """ROUGE-L (summary-level LCS, no stemming): precision, recall and F1 (beta = 1, as rouge-score)."""
    pred, ref = rouge_tokens(prediction, language), rouge_tokens(reference, language)
    lcs = _lcs_length(pred, ref) if pred and ref else 0
    if lcs == 0:
        return RougeScore(0.0, 0.0, 0.0)
    precision, recall = lcs / len(pred), lcs / len(ref)
    return RougeScore(precision, recall, 2 * precision * recall / (precision + recall))


#: Languages that write 1.000 for a thousand (and 1,5 for one and a half).
_DOT_THOUSANDS = frozenset({"de", "es", "it", "pt", "id", "tr", "vi", "nl", "da", "ro", "el", "sw"})
_NUMBER = re.compile(r"(?<!\d)[-\u2212]?\d+(?:[.,]\d+)*")
_THIN_SPACE_GROUP = re.compile(r"(?<=\d)[\u00a0\u202f\u2009'](?=\d{3}(?!\d))")
_FULLWIDTH = str.maketrans({"\uff0c": ",", "\uff0e": ".", "\uff0d": "-", "\u2212": "-", "\u066b": ".", "\u066c": ","})


def _ascii_digits(text: str) -> str:
    """Any Unicode decimal digit (full-width, Arabic-Indic, Thai, Devanagari ...) to ASCII."""
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in text)


def _parse_number(raw: str, language: str) -> float | None:
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("-")
    separators = re.findall(r"[.,]", body)
    groups = re.split(r"[.,]", body)
    if not separators:
        return sign * float(body)
    if len(set(separators)) == 2:  # 1,234.5 or 1.234,5: the last separator is the decimal one
        decimal = separators[-1]
        integer, fraction = body.rsplit(decimal, 1)
        return sign * float(re.sub(r"[.,]", "", integer) + "." + fraction)
    sep = separators[0]
    thousands_sep = "." if normalize_language(language) in _DOT_THOUSANDS else ","
    all_groups_of_three = all(len(g) == 3 for g in groups[1:])
    if len(separators) > 1:  # 1,234,567: only thousands separators can repeat
        return sign * float("".join(groups)) if all_groups_of_three else None
    if sep == thousands_sep and all_groups_of_three:
        return sign * float("".join(groups))
    return sign * float(groups[0] + "." + groups[1])


def extract_number(text: str, language: str = "en", pick: str = "last") -> float | None:
    """The last (or first) number in ``text``, or None.

    Robust to thousands separators (1,234 / 1.234 in languages that write it
    so / 1 234 with a no-break space), decimals (3.5, 3,5), signs (-, U+2212),
    currency and units around the number, a sentence-final full stop, and
    non-ASCII digits (full-width, Arabic-Indic, Thai, Devanagari).
    """
    if pick not in ("first", "last"):
        raise EvaluationError(f"pick={pick!r} must be 'first' or 'last'")
    text = _THIN_SPACE_GROUP.sub("", _ascii_digits(text).translate(_FULLWIDTH))
    numbers = [value for m in _NUMBER.finditer(text) if (value := _parse_number(m.group(), language)) is not None]
    if not numbers:
        return None
    return numbers[-1] if pick == "last" else numbers[0]


def numbers_match(prediction: float | None, reference: float, tolerance: float = 1e-6) -> bool:
    """Exact numeric match up to float round-off."""
    return prediction is not None and math.isclose(prediction, reference, rel_tol=tolerance, abs_tol=tolerance)


# --------------------------------------------------------------------------
# 4. Benchmark data: hub or local files, one canonical record format each
# --------------------------------------------------------------------------

#: XLSum's hub config names for ISO codes.
XLSUM_NAMES = {
    "en": "english", "fr": "french", "es": "spanish", "ru": "russian", "zh": "chinese_simplified",
    "ja": "japanese", "ar": "arabic", "sw": "swahili", "th": "thai", "vi": "vietnamese", "hi": "hindi",
    "bn": "bengali", "id": "indonesian", "ko": "korean", "pt": "portuguese", "tr": "turkish", "uk": "ukrainian",
    "ur": "urdu", "fa": "persian", "te": "telugu", "ta": "tamil", "mr": "marathi", "ne": "nepali",
    "so": "somali", "ha": "hausa", "yo": "yoruba", "ig": "igbo", "am": "amharic", "cy": "welsh",
}


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives on the hub and how local copies are laid out."""

    hub_path: str
    hub_config: Callable[[str], str]
    hub_split: str
    local_names: Callable[[str, str | None], list[str]]
    local_split: str | None
    languages: tuple[str, ...]


BENCHMARKS: dict[str, Benchmark] = {
    "mgsm": Benchmark(
        "juletxara/mgsm", lambda lang: lang, "test",
        lambda lang, split: [f"{lang}.tsv", f"mgsm_{lang}.tsv"], None,
        ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"),
    ),
    "xquad": Benchmark(
        "google/xquad", lambda lang: f"xquad.{lang}", "validation",
        lambda lang, split: [f"xquad.{lang}.json", f"{lang}.json", f"xquad.{lang}.jsonl", f"{lang}.jsonl"], None,
        ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"),
    ),
    "xcopa": Benchmark(
        "cambridgeltl/xcopa", lambda lang: lang, "test",
        lambda lang, split: [f"{split}.{lang}.jsonl", f"{lang}.jsonl"], "test",
        ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh"),
    ),
    "xcsqa": Benchmark(
        "INK-USC/xcsr", lambda lang: f"X-CSQA-{'jap' if lang == 'ja' else lang}", "validation",
        lambda lang, split: [
            f"{code}/{split}.jsonl" for code in dict.fromkeys((lang, "jap" if lang == "ja" else lang))
        ] + [f"{split}.{lang}.jsonl", f"{lang}.jsonl"],
        "dev",
        ("ar", "de", "en", "es", "fr", "hi", "it", "ja", "nl", "pl", "pt", "ru", "sw", "ur", "vi", "zh"),
    ),
    "xlsum": Benchmark(
        "csebuetnlp/xlsum", lambda lang: XLSUM_NAMES.get(lang, lang), "test",
        lambda lang, split: [f"{XLSUM_NAMES.get(lang, lang)}_{split}.jsonl", f"{lang}_{split}.jsonl", f"{lang}.jsonl"],
        "test",
        tuple(sorted(XLSUM_NAMES)),
    ),
}


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8-sig") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _read_mgsm_tsv(path: Path) -> list[dict]:
    """MGSM's TSV: ``question<TAB>answer``, no header, no quoting (questions contain quotes)."""
    records = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != 2:
                raise EvaluationError(
                    f"{path}:{line_no} has {len(row)} tab-separated fields; MGSM needs question<TAB>answer"
                )
            records.append({"question": row[0], "answer": row[1]})
    return records


def _flatten_squad(payload: dict) -> list[dict]:
    """SQuAD JSON (``data/paragraphs/qas``) to flat ``context, question, answers`` records."""
    records = []
    for article in payload["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                records.append({"id": qa.get("id"), "context": paragraph["context"], "question": qa["question"],
                                "answers": qa["answers"]})
    return records


def _read_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        with open(path, encoding="utf-8-sig") as handle:
            payload = json.load(handle)
        if isinstance(payload, dict) and "data" in payload:
            nested = payload["data"] and "paragraphs" in payload["data"][0]
            return _flatten_squad(payload) if nested else payload["data"]
        if isinstance(payload, list):
            return payload
        raise EvaluationError(f"{path} is JSON but neither SQuAD format (data/paragraphs/qas) nor a list of records")
    if suffix == ".parquet":
        return pd.read_parquet(path).to_dict("records")
    if suffix == ".tsv":
        return _read_mgsm_tsv(path)
    raise EvaluationError(f"{path} has an unknown format {suffix!r}; use .jsonl, .json, .parquet or (MGSM) .tsv")


def _local_file(name: str, language: str, source: Path, split: str | None) -> Path:
    if source.is_file():
        return source
    if not source.is_dir():
        raise EvaluationError(f"{name}: data path {str(source)!r} does not exist")
    bench = BENCHMARKS[name]
    split = split or bench.local_split
    candidates = bench.local_names(language, split)
    if name == "xcsqa" and split == "dev":
        candidates += bench.local_names(language, "validation")
    for candidate in candidates:
        if (source / candidate).is_file():
            return source / candidate
    raise EvaluationError(
        f"{name}: no file for language {language!r} in {str(source)!r}; looked for {candidates}. "
        "Pass the file itself as data, or name it like one of these"
    )


def _hub_records(name: str, language: str, split: str | None) -> list[dict]:
    bench = BENCHMARKS[name]
    config, split = bench.hub_config(language), split or bench.hub_split
    try:
        import datasets

        return list(datasets.load_dataset(bench.hub_path, config, split=split))
    except Exception as error:  # no network, unknown config, ...: say what to do instead
        raise MissingDataError(
            f"metric {name!r} needs its benchmark data for language {language!r}, and loading "
            f"{bench.hub_path!r} (config {config!r}, split {split!r}) from the Hugging Face hub failed "
            f"({type(error).__name__}: {error}). Fix: pass data=<a local file or directory in the same format> "
            "(or make the hub reachable / the dataset cached)"
        ) from error


def _answer_texts(answers: Any) -> list[str]:
    if isinstance(answers, Mapping):
        return [str(t) for t in answers["text"]]
    return [str(a["text"]) if isinstance(a, Mapping) else str(a) for a in answers]


def _require(record: Mapping, fields: Sequence[str], name: str, index: int, hint: str = "") -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise EvaluationError(
            f"{name} record {index} lacks field(s) {missing} (it has {sorted(record)}); {name} needs "
            f"{', '.join(fields)}{hint}"
        )


def _canonical(name: str, record: Mapping, index: int, language: str) -> dict:
    """One benchmark record in this module's canonical form."""
    if name == "mgsm":
        answer = record.get("answer_number", record.get("answer"))
        _require({**record, "answer": answer} if answer is not None else record, ["question", "answer"], name, index)
        value = answer if isinstance(answer, (int, float)) else extract_number(str(answer), "en")
        if value is None:
            raise EvaluationError(f"mgsm record {index} has a non-numeric answer {answer!r}")
        return {"question": str(record["question"]), "answer": float(value)}
    if name == "xquad":
        hint = ("; this looks like a document corpus (id, text): use it with perplexity, continuation or "
                "fidelity through load_documents" if "text" in record and "question" not in record else "")
        _require(record, ["context", "question", "answers"], name, index, hint)
        answers = _answer_texts(record["answers"])
        if not answers:
            raise EvaluationError(f"xquad record {index} has no reference answer")
        return {"context": str(record["context"]), "question": str(record["question"]), "answers": answers}
    if name == "xcopa":
        _require(record, ["premise", "choice1", "choice2", "question", "label"], name, index)
        if record["question"] not in ("cause", "effect"):
            raise EvaluationError(f"xcopa record {index} has question={record['question']!r}; use cause or effect")
        return {k: record[k] for k in ("premise", "choice1", "choice2", "question")} | {"label": int(record["label"])}
    if name == "xcsqa":
        _require(record, ["question", "answerKey"], name, index)
        question = record["question"]
        choices = question["choices"]
        if isinstance(choices, Mapping):  # hub layout: {label: [...], text: [...]}
            labels, texts = list(choices["label"]), list(choices["text"])
        else:  # X-CSR JSONL layout: [{label, text}, ...]
            labels, texts = [c["label"] for c in choices], [c["text"] for c in choices]
        if record["answerKey"] not in labels:
            raise EvaluationError(
                f"xcsqa record {index} has answerKey {record['answerKey']!r} not among its choice labels {labels} "
                "(the hub's test split has no answers; use the validation/dev split)"
            )
        return {"stem": str(question["stem"]), "choices": [str(t) for t in texts],
                "label": labels.index(record["answerKey"])}
    if name == "xlsum":
        _require(record, ["text", "summary"], name, index)
        return {"text": str(record["text"]), "summary": str(record["summary"])}
    raise EvaluationError(f"benchmark {name!r} is unknown; use one of {', '.join(BENCHMARKS)}")


def load_benchmark(
    name: str, language: str, source: str | Path | None = None, *, split: str | None = None, limit: int | None = None
) -> list[dict]:
    """Canonical records of benchmark ``name`` in ``language``.

    ``source``: None loads from the Hugging Face hub (``datasets.load_dataset``);
    a file is read as is; a directory is searched for the usual file names
    (e.g. ``{lang}.tsv`` / ``mgsm_{lang}.tsv`` for MGSM, ``{split}.{lang}.jsonl``
    for XCOPA, SQuAD-format ``xquad.{lang}.json`` for XQuAD).
    """
    if name not in BENCHMARKS:
        raise EvaluationError(f"benchmark {name!r} is unknown; use one of {', '.join(BENCHMARKS)}")
    language = normalize_language(language)
    if source is None:
        if language not in BENCHMARKS[name].languages:
            raise EvaluationError(
                f"{name} has no language {language!r} on the hub; it has {', '.join(BENCHMARKS[name].languages)}"
            )
        raw = _hub_records(name, language, split)
    else:
        raw = _read_records(_local_file(name, language, Path(source), split))
    if limit is not None:
        raw = raw[:limit]
    records = [_canonical(name, record, i, language) for i, record in enumerate(raw)]
    if not records:
        raise EvaluationError(f"{name} data for language {language!r} is empty")
    return records


def _benchmark_records(name: str, data: Any, language: str, split: str | None, limit: int | None) -> list[dict]:
    """Records from whatever the caller passed: None (hub), a path, records, or a DataFrame."""
    if data is None or isinstance(data, (str, Path)):
        return load_benchmark(name, language, data, split=split, limit=limit)
    raw = data.to_dict("records") if isinstance(data, pd.DataFrame) else list(data)
    if limit is not None:
        raw = raw[:limit]
    if not raw:
        raise EvaluationError(f"{name} data for language {language!r} is empty")
    return [_canonical(name, record, i, language) for i, record in enumerate(raw)]


_INVISIBLE_DOC_CHARS = re.compile("[\ufeff\u200b]")


def load_documents(path: str | Path, language: str | None = None, *, split: str = "eval") -> pd.DataFrame:
    """Local aligned documents as a corpus table (doc_id, language, text, split, n_chars, align_key).

    Reads the shared-data layouts: JSONL with ``id, text`` (XQuAD paragraphs,
    Debian handbook; aligned by ``id``), TSV with a header and ``text`` plus
    ``flores_index`` (FLORES sentences; aligned by it), and corpus Parquet.
    The language defaults to the file stem (``fr.jsonl``). U+FEFF/U+200B are
    stripped. Every row gets ``split`` (these files are held-out text).
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"document file {str(path)!r} does not exist")
    language = normalize_language(language or path.stem.split(".")[-1])
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif suffix == ".jsonl":
        frame = pd.DataFrame(_read_jsonl(path))
    elif suffix == ".tsv":
        # CSV quoting as the shared FLORES files use it ("He said ""hi""."); bare quotes stay literal
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    else:
        raise EvaluationError(f"{path} has an unknown format {suffix!r}; use .jsonl, .tsv or .parquet")
    if "text" not in frame.columns:
        raise EvaluationError(f"{path} has no 'text' column (it has {list(frame.columns)})")
    key_column = next((c for c in ("align_key", "id", "flores_index") if c in frame.columns), None)
    keys = frame[key_column].astype(str) if key_column else pd.Series(range(len(frame))).astype(str)
    texts = frame["text"].astype(str).map(lambda t: _INVISIBLE_DOC_CHARS.sub("", t).strip())
    out = pd.DataFrame({
        "doc_id": [f"{language}:{k}" for k in keys],
        "language": language,
        "text": texts.to_numpy(),
        "split": split,
        "n_chars": texts.str.len().to_numpy(),
        "align_key": keys.to_numpy() if key_column else None,
    })
    return out[out["text"] != ""].reset_index(drop=True)


# --------------------------------------------------------------------------
# 4b. Benchmark metrics
# --------------------------------------------------------------------------


def _fit_prompt(tokenizer, template: str, body_field: str, fields: Mapping[str, str], max_tokens: int) -> list[int]:
    """Prompt ids of ``template.format(**fields)``, shortening ``fields[body_field]`` from its end to fit.

    The body (an article, a passage) is what may be cut; the instruction and
    the question around it are kept whole. A final guard keeps the last
    ``max_tokens`` tokens in case re-tokenisation at the cut grew the prompt.
    """
    prefix = _special_prefix(tokenizer)
    ids = prefix + _encode(tokenizer, template.format(**fields))
    if len(ids) <= max_tokens:
        return ids
    body_ids = _encode(tokenizer, fields[body_field])
    keep = max(0, len(body_ids) - (len(ids) - max_tokens) - 8)
    shortened = dict(fields, **{body_field: tokenizer.decode(body_ids[:keep], skip_special_tokens=True)})
    ids = _encode(tokenizer, template.format(**shortened))
    room = max(1, max_tokens - len(prefix))
    return prefix + ids[-room:]


def _max_prompt_tokens(model: torch.nn.Module, max_new_tokens: int, max_prompt_tokens: int | None) -> int:
    limit = max(1, _model_max_length(model) - max_new_tokens)
    return limit if max_prompt_tokens is None else min(max_prompt_tokens, limit)


MGSM_TEMPLATE = "Question: {question}\nAnswer:"
MGSM_STOP = ("\n\n", "Question:")


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def mgsm(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping],
    language: str,
    *,
    n_shots: int = 0,
    template: str = MGSM_TEMPLATE,
    max_new_tokens: int = 48,
    stop: Sequence[str] = MGSM_STOP,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """MGSM exact match: the final number of the greedy answer equals the reference number.

    ``n_shots`` > 0 uses the first ``n_shots`` records as worked examples
    (``template`` followed by `` <answer>``) and evaluates the rest.
    """
    if n_shots < 0 or n_shots >= len(records):
        raise EvaluationError(f"n_shots={n_shots} must be in [0, {len(records) - 1}] for {len(records)} records")
    shots = "".join(template.format(question=r["question"]) + f" {_format_number(r['answer'])}\n\n"
                    for r in records[:n_shots])
    evaluated = list(records[n_shots:])
    prompts = [shots + template.format(question=r["question"]) for r in evaluated]
    outputs = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              stop=stop, progress=progress)
    predicted = [extract_number(text, language) for text in outputs]
    hits = [numbers_match(p, r["answer"]) for p, r in zip(predicted, evaluated)]
    return {
        "value": float(np.mean(hits)),
        "n": len(hits),
        "n_no_number": sum(p is None for p in predicted),
        "details": [{"item": i, "generation": t, "predicted": p, "answer": r["answer"]}
                    for i, (t, p, r) in enumerate(zip(outputs, predicted, evaluated))],
    }


def _generate_from_template(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping],
    template: str,
    long_field: str,
    max_new_tokens: int,
    max_prompt_tokens: int | None,
    stop: Sequence[str],
    batch_size: int,
    progress: bool,
) -> list[str]:
    """Greedy continuations of ``template`` filled from each record, ``long_field`` cut to fit the context."""
    budget = _max_prompt_tokens(model, max_new_tokens, max_prompt_tokens)
    prompts = [_fit_prompt(tokenizer, template, long_field, r, budget) for r in records]
    return greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           stop=stop, progress=progress)  # fmt: skip


XQUAD_TEMPLATE = "{context}\n\nQuestion: {question}\nAnswer:"


def xquad(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping],
    language: str,
    *,
    template: str = XQUAD_TEMPLATE,
    max_new_tokens: int = 32,
    max_prompt_tokens: int | None = None,
    stop: Sequence[str] = ("\n",),
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Generative XQuAD: mean SQuAD F1 (character level for zh/ja/th) of greedy answers; also exact match."""
    outputs = _generate_from_template(model, tokenizer, records, template, "context", max_new_tokens,
                                      max_prompt_tokens, stop, batch_size, progress)  # fmt: skip
    f1 = [token_f1(text, r["answers"], language) for text, r in zip(outputs, records)]
    em = [exact_match(text, r["answers"], language) for text, r in zip(outputs, records)]
    return {
        "value": float(np.mean(f1)),
        "n": len(f1),
        "exact_match": float(np.mean(em)),
        "details": [{"item": i, "generation": t, "f1": s, "answers": r["answers"]}
                    for i, (t, s, r) in enumerate(zip(outputs, f1, records))],
    }


#: XCOPA's connectors, as lm-evaluation-harness phrases them: premise + connector + choice.
XCOPA_CONNECTORS: dict[str, dict[str, str]] = {
    "en": {"cause": "because", "effect": "therefore"},
    "et": {"cause": "sest", "effect": "seetõttu"},
    "ht": {"cause": "poukisa", "effect": "donk sa"},
    "it": {"cause": "perché", "effect": "quindi"},
    "id": {"cause": "karena", "effect": "maka"},
    "qu": {"cause": "imataq", "effect": "chaymi"},
    "sw": {"cause": "kwa sababu", "effect": "kwa hiyo"},
    "zh": {"cause": "因为", "effect": "所以"},
    "ta": {"cause": "காரணமாக", "effect": "எனவே"},
    "th": {"cause": "เพราะ", "effect": "ดังนั้น"},
    "tr": {"cause": "çünkü", "effect": "bu yüzden"},
    "vi": {"cause": "bởi vì", "effect": "vì vậy"},
}
_NO_SPACE = frozenset({"zh", "ja"})


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def xcopa_item(record: Mapping, language: str, connectors: Mapping[str, str]) -> tuple[str, list[str]]:
    """(context, choices): "premise<sep>connector", "<sep>choice" with the choice's first letter lower-cased."""
    sep = "" if normalize_language(language) in _NO_SPACE else " "
    premise = record["premise"].strip().rstrip(".。!！")
    context = f"{premise}{sep}{connectors[record['question']]}"
    return context, [sep + _lower_first(record[k].strip()) for k in ("choice1", "choice2")]


def xcopa(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping],
    language: str,
    *,
    connectors: Mapping[str, str] | None = None,
    normalization: str = "sum",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """XCOPA accuracy: the more likely of the two choices after "premise because/therefore"."""
    language = normalize_language(language)
    if connectors is None:
        if language not in XCOPA_CONNECTORS:
            raise EvaluationError(
                f"xcopa has no connector words for language {language!r} (known: {', '.join(XCOPA_CONNECTORS)}); "
                "pass connectors={'cause': ..., 'effect': ...}"
            )
        connectors = XCOPA_CONNECTORS[language]
    pairs = [xcopa_item(r, language, connectors) for r in records]
    contexts, choices = [c for c, _ in pairs], [o for _, o in pairs]
    return multiple_choice(model, tokenizer, contexts, choices, [r["label"] for r in records],
                           normalization=normalization, batch_size=batch_size, progress=progress)


XCSQA_TEMPLATE = "Question: {stem}\nAnswer:"


def xcsqa(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping],
    language: str,
    *,
    template: str = XCSQA_TEMPLATE,
    normalization: str = "sum",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """X-CSQA accuracy: the most likely of the five answer choices after the question."""
    contexts = [template.format(stem=r["stem"]) for r in records]
    choices = [[" " + c for c in r["choices"]] for r in records]
    return multiple_choice(model, tokenizer, contexts, choices, [r["label"] for r in records],
                           normalization=normalization, batch_size=batch_size, progress=progress)


XLSUM_TEMPLATE = "Article: {text}\nSummary:"


def xlsum(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[Mapping],
    language: str,
    *,
    template: str = XLSUM_TEMPLATE,
    max_new_tokens: int = 64,
    max_prompt_tokens: int | None = None,
    stop: Sequence[str] = ("\n",),
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """XLSum: mean ROUGE-L F between the greedy summary and the reference (see :func:`rouge_tokens`)."""
    outputs = _generate_from_template(model, tokenizer, records, template, "text", max_new_tokens,
                                      max_prompt_tokens, stop, batch_size, progress)  # fmt: skip
    scores = [rouge_l(text, r["summary"], language) for text, r in zip(outputs, records)]
    return {
        "value": float(np.mean([s.fmeasure for s in scores])),
        "n": len(scores),
        "rouge_l_precision": float(np.mean([s.precision for s in scores])),
        "rouge_l_recall": float(np.mean([s.recall for s in scores])),
        "details": [
            {"item": i, "generation": t, "rouge_l": s.fmeasure} for i, (t, s) in enumerate(zip(outputs, scores))
        ],
    }


# --------------------------------------------------------------------------
# 5. The dispatcher
# --------------------------------------------------------------------------


def _missing(metric: str, language: str, needs: str, fix: str) -> MissingDataError:
    return MissingDataError(f"metric {metric!r} (language {language!r}) needs {needs}, but data is None. Fix: {fix}")


def _docs_of(data: Any, metric: str, language: str, split: str | None) -> pd.DataFrame | list[str]:
    """A corpus table (from a DataFrame or a document file) or a plain list of texts."""
    if data is None:
        raise _missing(metric, language, "held-out documents (a corpus table with columns language, text, split)",
                       "pass data=langneurons.corpora.read_corpus(<parquet>, splits='eval') or a document file path")
    if isinstance(data, (str, Path)):
        data = load_documents(data, language)
    if isinstance(data, pd.DataFrame):
        return _select_docs(data, split, f"{metric} data")
    return _check_texts(data, f"{metric} data")


def _run_perplexity(model, tokenizer, data, language, *, split: str | None = "eval", limit: int | None = None,
                    max_length: int | None = 512, batch_size: int = 8, padding_side: str = "right",
                    progress: bool = True) -> dict[str, Any]:
    docs = _docs_of(data, "perplexity", language, split)
    if isinstance(docs, pd.DataFrame):
        mine = docs[docs["language"] == normalize_language(language)]
        if mine.empty:
            raise EvaluationError(f"perplexity data has no documents of language {language!r}; "
                                  f"it has {sorted(set(docs['language']))}")
        texts = mine["text"].tolist()
    else:
        texts = docs
    texts = texts[:limit] if limit is not None else texts
    result = perplexity(model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
                        padding_side=padding_side, progress=progress)
    return {"value": result.perplexity, "n": result.n_docs, "n_tokens": result.n_tokens,
            "nll_sum": result.nll_sum, "mean_nll": result.mean_nll}


def _run_continuation(model, tokenizer, data, language, *, split: str | None = "eval", n_items: int = 100,
                      seed: int = 0, n_choices: int = 4, context_sentences: int = 3, continuation_sentences: int = 2,
                      normalization: str = "sum", max_length: int | None = 512, batch_size: int = 8,
                      padding_side: str = "right", progress: bool = True) -> dict[str, Any]:
    if data is None:
        raise _missing("continuation", language,
                       "held-out aligned documents of every language (or items from build_continuation_items)",
                       "pass data=read_corpus(<parquet>) of all the experiment's languages, so that the items are "
                       "parallel across them")
    if isinstance(data, (str, Path)):
        data = load_documents(data, language)
    if not isinstance(data, pd.DataFrame):
        raise EvaluationError("continuation data must be a corpus table or an items table (build_continuation_items)")
    items = data if "choices" in data.columns else build_continuation_items(
        data, n_items, seed, n_choices, context_sentences=context_sentences,
        continuation_sentences=continuation_sentences, split=split,
    )
    return continuation(model, tokenizer, items, language, normalization=normalization, max_length=max_length,
                        batch_size=batch_size, padding_side=padding_side, progress=progress)


def _run_fidelity(model, tokenizer, data, language, *, languages: Sequence[str] | None = None,
                  split: str | None = "eval", limit: int | None = 100, prompt_tokens: int = 32,
                  max_new_tokens: int = 32, batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    docs = _docs_of(data, "fidelity", language, split)
    if isinstance(docs, pd.DataFrame):
        prompts: list = _doc_prompts(tokenizer, docs, language, prompt_tokens, limit)
        if languages is None:
            languages = sorted(set(docs["language"]))
    else:
        prompts = docs[:limit] if limit is not None else docs
    return fidelity(model, tokenizer, prompts, language, languages=languages, max_new_tokens=max_new_tokens,
                    batch_size=batch_size, progress=progress)


def _benchmark_runner(name: str, function: Callable) -> Callable:
    def run(model, tokenizer, data, language, *, split: str | None = None, limit: int | None = None, **options):
        records = _benchmark_records(name, data, language, split, limit)
        return function(model, tokenizer, records, language, **options)

    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*list(inspect.signature(run).parameters.values())[:4],
         inspect.Parameter("split", inspect.Parameter.KEYWORD_ONLY, default=None),
         inspect.Parameter("limit", inspect.Parameter.KEYWORD_ONLY, default=None),
         *[p for p in list(inspect.signature(function).parameters.values())[4:]]]
    )
    return run


@dataclass(frozen=True)
class Metric:
    """One entry of :data:`METRICS`: a runner ``(model, tokenizer, data, language, **options) -> dict``."""

    run: Callable[..., dict[str, Any]]
    data: str

    def options(self) -> list[str]:
        return [p.name for p in list(inspect.signature(self.run).parameters.values())[4:]]


METRICS: dict[str, Metric] = {
    "perplexity": Metric(_run_perplexity, "corpus table (split eval) or document file or list of texts"),
    "continuation": Metric(_run_continuation, "aligned corpus table of all languages, or continuation items"),
    "fidelity": Metric(_run_fidelity, "corpus table (split eval) or document file or list of prompts"),
    "mgsm": Metric(_benchmark_runner("mgsm", mgsm), "None (hub juletxara/mgsm), TSV question<TAB>answer, or records"),
    "xquad": Metric(_benchmark_runner("xquad", xquad), "None (hub google/xquad), SQuAD JSON/JSONL, or records"),
    "xcopa": Metric(_benchmark_runner("xcopa", xcopa), "None (hub cambridgeltl/xcopa), JSONL, or records"),
    "xcsqa": Metric(_benchmark_runner("xcsqa", xcsqa), "None (hub INK-USC/xcsr), X-CSR JSONL, or records"),
    "xlsum": Metric(_benchmark_runner("xlsum", xlsum), "None (hub csebuetnlp/xlsum), JSONL text/summary, or records"),
}


def evaluate(
    model: torch.nn.Module, tokenizer, metric: str, data: Any, language: str, **options: Any
) -> dict[str, Any]:
    """Run ``metric`` for ``language``; returns ``{metric, language, value, n, <extras>, details}``.

    Wrap the call in ``with deactivate(model, neurons):`` to evaluate an
    ablation. ``value`` is the headline number (perplexity; otherwise a
    fraction in [0, 1]); ``details`` holds per-item outputs (texts,
    predictions) and is dropped by :func:`results_table`.
    """
    if metric not in METRICS:
        raise EvaluationError(f"metric {metric!r} is unknown; use one of {', '.join(METRICS)}")
    language = normalize_language(language)
    entry = METRICS[metric]
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise EvaluationError(f"metric {metric!r} has no option(s) {unknown}; its options are {entry.options()}")
    result = entry.run(model, tokenizer, data, language, **options)
    details = result.pop("details", None)
    return {"metric": metric, "language": language, **result, "details": details}


def results_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Tidy table of results: one row per result, its scalar fields as columns (``details`` dropped)."""
    rows = [{k: v for k, v in r.items() if k != "details" and (v is None or np.isscalar(v))} for r in results]
    frame = pd.DataFrame(rows)
    first = [c for c in ("metric", "language", "value", "n") if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]
