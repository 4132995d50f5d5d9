"""Greedy generation, and generation fidelity: the share of continuations in the prompt's language."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from langneurons.architectures import input_device
from langneurons.batching import encode, pad_token_id, padded_batches, special_prefix
from langneurons.evaluation.common import (
    EvaluationError,
    _check_batch_size,
    _eval_mode,
    _model_max_length,
    normalize_language,
)
from langneurons.evaluation.langid import _check_langid_languages, identify_languages

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


def _prompt_ids(tokenizer, prompts: Sequence[str | Sequence[int]], max_prompt_tokens: int) -> list[list[int]]:
    """Prompts as ids: strings get the special prefix; too long prompts keep their end."""
    texts = [prompt for prompt in prompts if isinstance(prompt, str)]
    room = max(1, max_prompt_tokens - len(special_prefix(tokenizer)))
    encoded = iter(encode(tokenizer, texts, len(special_prefix(tokenizer)) + room, specials="prefix", keep="end"))
    return [next(encoded) if isinstance(p, str) else [int(t) for t in p][-max_prompt_tokens:] for p in prompts]


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
    encoded = _prompt_ids(tokenizer, prompts, max_prompt_tokens)
    if any(not ids for ids in encoded):
        raise EvaluationError("a prompt encodes to no tokens; prompts must not be empty")
    pad_id = pad_token_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    device = input_device(model)
    outputs: list[str] = [""] * len(encoded)
    with _eval_mode(model), tqdm(total=len(encoded), desc="generating", disable=not progress, leave=False) as bar:
        # left padding: every prompt's last token in the last column, where decoding continues
        for rows, ids, mask in padded_batches(encoded, batch_size, pad_id, "left"):
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
    every language py3langid knows). Continuations without letters (empty,
    digits, punctuation) are in no language (``"und"``), so they
    count as not in ``language``.
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
    hits = np.array([label == language for label in labels], dtype=np.float64)
    counts = pd.Series(labels).value_counts()
    return {
        "value": float(hits.mean()),
        "n": len(texts),
        "per_item": pd.DataFrame({"item": np.arange(len(texts)), "value": hits, "label": labels}),
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
    return encode(tokenizer, mine["text"].tolist(), len(special_prefix(tokenizer)) + prompt_tokens, specials="prefix")
