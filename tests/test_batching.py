"""Texts to padded batches (langneurons.batching): truncation, length order, padding sides, pad ids."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from evaluation_helpers import char_tokenizer
from models import tiny_model

from langneurons.architectures import forward_inputs
from langneurons.batching import encode, length_batches, pad, pad_token_id, padded_batches, special_prefix

TEXTS = ["abc", "", "hello world", "x", "a much longer text than the others"]


@pytest.fixture(scope="module")
def tok():
    tokenizer = char_tokenizer()
    tokenizer.model_max_length = 8  # the texts above are longer: transformers would warn about them
    return tokenizer


def test_encode_truncates_like_cutting_the_full_encoding(tok):
    full = [tok(text, verbose=False)["input_ids"] for text in TEXTS]  # <s> + one id per character
    assert encode(tok, TEXTS, 6) == [ids[:6] for ids in full]
    assert encode(tok, TEXTS) == full
    bare = [tok(text, add_special_tokens=False, verbose=False)["input_ids"] for text in TEXTS]
    assert special_prefix(tok) == [tok.bos_token_id]
    assert encode(tok, TEXTS, 6, specials="prefix") == [[tok.bos_token_id] + ids[:5] for ids in bare]
    assert encode(tok, TEXTS, 6, specials="prefix", keep="end") == [[tok.bos_token_id] + ids[-5:] for ids in bare]
    assert encode(tok, TEXTS, 6, specials="none", keep="end") == [ids[-6:] if ids else [] for ids in bare]
    with pytest.raises(ValueError, match="not one string"):
        encode(tok, "one text")
    with pytest.raises(ValueError, match="no room"):
        encode(tok, TEXTS, 1, specials="prefix")
    with pytest.raises(ValueError, match="leading special tokens"):
        encode(tok, TEXTS, 6, keep="end")


def test_encode_never_warns_about_sequences_longer_than_the_model(tok):
    # transformers records that warning here (and prints it only the first time per tokenizer)
    warned = "sequence-length-is-longer-than-the-specified-maximum"
    tok.deprecation_warnings.clear()
    for keep in ("start", "end"):
        encode(tok, TEXTS, 6, specials="prefix", keep=keep)
    encode(tok, TEXTS, specials="none")
    assert warned not in tok.deprecation_warnings
    tok(TEXTS)  # the plain call does warn: the check above can fail
    assert tok.deprecation_warnings[warned]


def test_length_batches_go_longest_first_and_keep_ties_in_order():
    assert list(length_batches([2, 5, 2, 7, 5], 2)) == [[3, 1], [4, 0], [2]]
    assert list(length_batches([], 3)) == []
    with pytest.raises(ValueError, match="batch_size"):
        list(length_batches([1], 0))


def test_pad_on_either_side():
    ids, mask = pad([[5, 6, 7], [8], torch.tensor([9, 10])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    ids, mask = pad([[5, 6, 7], [8]], pad_id=1, side="left")
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="'middle'"):
        pad([[1]], 0, side="middle")


def test_padded_batches_cover_every_sequence_once():
    sequences = [[1] * n for n in (3, 1, 4, 1, 5)]
    seen = []
    for rows, ids, mask in padded_batches(sequences, 2, pad_id=0):
        assert ids.shape == mask.shape == (len(rows), max(len(sequences[i]) for i in rows))
        assert mask.sum(1).tolist() == [len(sequences[i]) for i in rows]
        seen += rows
    assert sorted(seen) == list(range(5)) and seen[:2] == [4, 2]


def test_logits_do_not_depend_on_batching_or_padding_side(tok):
    model = tiny_model("llama").eval()
    sequences = encode(tok, TEXTS[2:] + TEXTS[:1], 12)
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([seq])).logits[0] for seq in sequences]
        for side in ("left", "right"):
            for rows, ids, mask in padded_batches(sequences, 3, pad_token_id(tok), side):
                logits = model(**forward_inputs(model, ids, mask)).logits
                for row, i in enumerate(rows):
                    real = mask[row].bool()
                    torch.testing.assert_close(logits[row][real], alone[i], rtol=1e-4, atol=1e-5)


def test_pad_token_id_falls_back_to_eos_then_zero():
    assert pad_token_id(SimpleNamespace(pad_token_id=3, eos_token_id=2)) == 3
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=[7, 8])) == 7  # configs may list several
    assert pad_token_id(SimpleNamespace()) == 0
    assert pad_token_id(None) == 0


#: A document far longer than the tokenizer's model_max_length (16 below), one token per character.
LONG_DOCUMENT = "a long document, " * 40


def _run_path(path: str, model, tok):
    from langneurons.evaluation.generation import greedy_generate
    from langneurons.evaluation.scoring import document_nll, score_continuations
    from langneurons.evaluation.tasks import _fit_prompt
    from langneurons.finetuning import tokenize_documents
    from langneurons.logit_lens import batches_from_texts
    from langneurons.scoring import score_documents
    from langneurons.steps.logit_lens import corpus_token_counts

    docs = [LONG_DOCUMENT, "short"]
    runs = {
        "plnd scoring": lambda: score_documents(model, tok, docs, sites=["ffn"], max_length=32, progress=False),
        "perplexity": lambda: document_nll(model, tok, docs, max_length=32, progress=False),
        "continuations": lambda: score_continuations(
            model, tok, docs, [["yes", LONG_DOCUMENT], ["a", "b"]], max_length=32, progress=False
        ),
        "generation": lambda: greedy_generate(model, tok, docs, max_new_tokens=2, max_prompt_tokens=24, progress=False),
        "task prompt": lambda: _fit_prompt(tok, "Read: {body} Answer:", "body", {"body": LONG_DOCUMENT}, 24),
        "fine-tuning": lambda: tokenize_documents(docs, tok, 32),
        "logit lens": lambda: list(batches_from_texts(tok, docs, batch_size=2, max_length=32)),
        "token counts": lambda: corpus_token_counts(tok, docs, model.config.vocab_size),
    }
    return runs[path]()


@pytest.mark.parametrize(
    "path",
    [
        "plnd scoring", "perplexity", "continuations", "generation", "task prompt", "fine-tuning", "logit lens",
        "token counts",
    ],
)  # fmt: skip
def test_no_step_warns_that_a_long_document_exceeds_the_model(path):
    """transformers' "Token indices sequence length is longer than the specified maximum" never appears: every
    path cuts a long text by truncation, or encodes it in full on purpose with the warning off."""
    warned = "sequence-length-is-longer-than-the-specified-maximum"
    tok = char_tokenizer()
    tok.model_max_length = 16
    model = tiny_model("llama")
    _run_path(path, model, tok)
    assert warned not in tok.deprecation_warnings
    tok([LONG_DOCUMENT])  # a plain call records the warning: the check above can fail
    assert tok.deprecation_warnings[warned]
