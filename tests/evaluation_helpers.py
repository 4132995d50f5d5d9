"""Shared pieces of the evaluation tests: a character tokenizer, brute-force references, toy corpora."""

from __future__ import annotations

import string

import pandas as pd
import torch

CHARS = string.ascii_lowercase + string.ascii_uppercase + string.digits + " .,?!:'\n-$" + "的是一不了我爱在北京"


def char_tokenizer():
    """One token per character, ``<s>`` prepended like Llama tokenizers; decodes losslessly."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + list(CHARS))}
    assert len(vocab) <= 97
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


TEXTS = [
    "Hello world. This is a test of things.",
    "Short",
    "A much longer text, with several words in it, to pad the others: yes! And more words here.",
    "x y z",
    "我爱北京. 北京是一",
]


def brute_logprob(model, ids: list[int], start: int) -> tuple[float, int]:
    """Sum of log p(ids[t] | ids[:t]) for t >= start, one unpadded sequence."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = logits.log_softmax(-1)
    total = sum(float(logprobs[t - 1, ids[t]]) for t in range(max(1, start), len(ids)))
    return total, len(ids) - max(1, start)


def brute_choice_logprob(model, tok, context: str, choice: str) -> float:
    ctx = tok(context)["input_ids"]  # <s> + context
    return brute_logprob(model, ctx + tok(choice, add_special_tokens=False)["input_ids"], len(ctx))[0]


def corpus(languages=("en", "fr", "zh"), n_docs=8, short=()) -> pd.DataFrame:
    """Aligned toy documents: key k has 5 sentences in every language (2 where listed in ``short``)."""
    rows = []
    for lang in languages:
        end = "。" if lang == "zh" else ". "
        for k in range(n_docs):
            n_sent = 2 if (lang, k) in short else 5
            text = "".join(f"{lang} doc {k} sentence {s}{end}" for s in range(n_sent)).strip()
            rows.append((f"{lang}:{k}", lang, text, "eval", len(text), f"key{k:02d}"))
        rows.append((f"{lang}:train", lang, "Not for evaluation. At all. Never. No. No.", "train", 40, "train0"))
    return pd.DataFrame(rows, columns=["doc_id", "language", "text", "split", "n_chars", "align_key"])
