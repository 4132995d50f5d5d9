"""Texts to padded batches: tokenise with truncation, batch by length, pad on either side.

Every step that runs a model on documents (PLND scoring, the logit lens,
fine-tuning, evaluation) turns texts into ``[batch, tokens]`` id and mask
tensors the same way, here:

* :func:`encode` tokenises with truncation, so a long document is cut by the
  tokenizer instead of being tokenised in full and cut afterwards (which also
  keeps transformers' "Token indices sequence length is longer than the
  specified maximum" warning away). Where the *end* of a text must survive (a
  multiple-choice context, a generation prompt), the text is encoded in full
  on purpose and the warning is silenced for that call only.
* :func:`padded_batches` groups sequences longest first, so that a batch holds
  sequences of similar length and little padding is computed; the positions
  it yields map each row back to its input.
* :func:`pad` pads on the right or on the left (batched generation needs the
  last tokens aligned) and returns the 0/1 attention mask.
* :func:`pad_token_id` is the id that fills padded positions.

Results never depend on the batching: padded positions are masked, and the
callers pass position ids derived from the mask
(:func:`langneurons.architectures.forward_inputs`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch

__all__ = ["encode", "length_batches", "pad", "pad_token_id", "padded_batches", "special_prefix"]

Specials = Literal["tokenizer", "prefix", "none"]
Keep = Literal["start", "end"]
PADDING_SIDES = ("right", "left")


def pad_token_id(source: Any) -> int:
    """The id that fills padded positions: the pad token, else the (first) end-of-sequence token, else 0.

    ``source`` is a tokenizer or a model config; both carry ``pad_token_id``
    and ``eos_token_id``. The choice never reaches a result, because padded
    positions are masked; it only has to be a valid token id.
    """
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(source, name, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


@functools.lru_cache(maxsize=8)
def _special_prefix_cached(tokenizer) -> tuple[int, ...]:
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(without) + 1):
        if with_special[start : start + len(without)] == without:
            return tuple(with_special[:start])
    return ()


def special_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts *before* a text (e.g. ``<s>``), never a suffix."""
    try:
        return list(_special_prefix_cached(tokenizer))
    except TypeError:  # unhashable tokenizer
        return list(_special_prefix_cached.__wrapped__(tokenizer))


def encode(
    tokenizer,
    texts: Sequence[str],
    max_length: int | None = None,
    *,
    specials: Specials = "tokenizer",
    keep: Keep = "start",
) -> list[list[int]]:
    """Token ids of each text, at most ``max_length`` of them (None: all), in one batched tokenizer call.

    ``specials``: ``"tokenizer"`` adds the special tokens as the tokenizer
    does (they count towards ``max_length``); ``"prefix"`` adds only those it
    puts before a text (:func:`special_prefix`), so that a tokenizer that
    appends ``</s>`` cannot end a context or a prompt early; ``"none"`` adds
    none. ``keep``: which part of a too long text survives. ``"start"`` is cut
    by the tokenizer's own truncation; ``"end"`` (what lies nearest a
    continuation) encodes the text in full and keeps its last tokens, after
    the prefix.
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not one string")
    if specials not in ("tokenizer", "prefix", "none"):
        raise ValueError(f"specials={specials!r} is unknown; use 'tokenizer', 'prefix' or 'none'")
    if keep not in ("start", "end"):
        raise ValueError(f"keep={keep!r} is unknown; use 'start' or 'end'")
    if keep == "end" and specials == "tokenizer":
        raise ValueError("keep='end' would cut the tokenizer's leading special tokens; use specials='prefix'")
    texts = list(texts)
    if not texts:
        return []
    prefix = special_prefix(tokenizer) if specials == "prefix" else []
    room = None if max_length is None else max_length - len(prefix)
    if room is not None and room < 1:
        raise ValueError(f"max_length={max_length} leaves no room for text after {len(prefix)} special token(s)")
    add_special_tokens = specials == "tokenizer"
    if room is not None and keep == "start":
        ids = tokenizer(texts, add_special_tokens=add_special_tokens, truncation=True, max_length=room)["input_ids"]
    else:
        # in full on purpose: the caller cuts (from the end here, or to its own budget), so the
        # tokenizer's warning about sequences longer than the model's maximum would be noise
        ids = tokenizer(texts, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
        if room is not None:
            ids = [seq[-room:] for seq in ids]
    return [prefix + list(seq) for seq in ids]


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Positions of ``lengths`` in batches of ``batch_size``, longest first; equal lengths keep their order."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for first in range(0, len(order), batch_size):
        yield order[first : first + batch_size]


def pad(
    sequences: Sequence[Sequence[int] | torch.Tensor], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence on ``side``; returns ``[batch, width]`` ids and the 0/1 attention mask."""
    if side not in PADDING_SIDES:
        raise ValueError(f"padding side {side!r} is unknown; use 'left' or 'right'")
    if not sequences:
        raise ValueError("no sequences to pad")
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            continue
        where = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, where] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, where] = 1
    return ids, mask


def padded_batches(
    sequences: Sequence[Sequence[int] | torch.Tensor], batch_size: int, pad_id: int, side: str = "right"
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """``(positions, ids, mask)`` per batch, longest sequences first (:func:`length_batches`, :func:`pad`)."""
    for rows in length_batches([len(seq) for seq in sequences], batch_size):
        ids, mask = pad([sequences[i] for i in rows], pad_id, side)
        yield rows, ids, mask
