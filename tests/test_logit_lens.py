"""The logit-lens language ratio: attribution, decoding, padding, final norm, a trained model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from models import ARCHITECTURE_NAMES, VOCAB, random_batch, tiny_model, to_padding_side
from transformers import LlamaConfig, LlamaForCausalLM

from langneurons.architectures import dimensions, get_architecture
from langneurons.interventions import deactivate
from langneurons.logit_lens import (
    OTHER,
    LogitLensError,
    TokenLanguages,
    batches_from_texts,
    combine_token_tables,
    count_tokens,
    langid_token_table,
    language_ratio,
    language_ratios,
    layer_label_counts,
    token_language_table,
)

#: Two synthetic "languages" with disjoint token ranges; 81..96 and 0..2 belong to neither.
RANGES = {"en": (3, 41), "xx": (41, 81)}


def range_table() -> TokenLanguages:
    labels = torch.full((VOCAB,), OTHER, dtype=torch.long)
    labels[3:41], labels[41:81] = 0, 1
    return TokenLanguages(("en", "xx"), labels)


def identity_table() -> TokenLanguages:
    """Every token its own "language": the label counts are then the histogram of decoded tokens."""
    return TokenLanguages(tuple(f"t{i}" for i in range(VOCAB)), torch.arange(VOCAB))


# ---- token attribution --------------------------------------------------------------------------


def test_token_table_uses_relative_frequency_ratio_and_min_count():
    en = Counter({3: 1000, 4: 100, 5: 50, 6: 2})  # English corpus is 10x larger
    fr = torch.bincount(torch.tensor([3] * 10 + [4] * 60 + [5] * 10 + [7] * 30))  # a count vector works too
    table = token_language_table({"en": en, "fr": fr}, ratio=5, min_count=3, vocab_size=10)
    # relative frequencies: en 3: .87, 4: .087, 5: .043; fr 3: .09, 4: .55, 5: .09, 7: .27
    assert table.labels[3] == 0  # 9.6x more frequent in en
    assert table.labels[4] == 1  # 6.3x more frequent in fr, although its raw count is lower
    assert table.labels[5] == OTHER  # fr/en = 2.1 < 5
    assert table.labels[6] == OTHER  # only 2 occurrences < min_count
    assert table.labels[7] == 1  # absent from en
    assert table.labels[[0, 1, 2, 8, 9]].eq(OTHER).all()
    assert table.vocab_size == 10
    assert torch.equal(table.tokens_of("fr"), torch.tensor([4, 7]))
    assert table.summary().set_index("language")["n_tokens"].to_dict() == {"other": 7, "en": 1, "fr": 2}


def test_token_table_from_counted_documents_recovers_disjoint_ranges():
    gen = torch.Generator().manual_seed(0)
    counts = {
        lang: count_tokens(torch.randint(lo, hi, (20, 30), generator=gen), None, VOCAB)
        for lang, (lo, hi) in RANGES.items()
    }
    assert torch.equal(token_language_table(counts, ratio=5, min_count=1).labels, range_table().labels)


def test_token_table_rejects_bad_settings():
    with pytest.raises(LogitLensError, match="ratio"):
        token_language_table({"en": Counter({1: 1})}, ratio=0.5)
    with pytest.raises(LogitLensError, match="all zero"):
        token_language_table({"en": Counter({1: 1}), "fr": Counter()}, vocab_size=4)


def test_combine_token_tables():
    stats = TokenLanguages(("en", "fr"), torch.tensor([0, 1, OTHER, 0, OTHER]))
    langid = TokenLanguages(("fr", "en", "de"), torch.tensor([1, 1, 0, OTHER, 2]))  # fr=0, en=1, de=2
    agree = combine_token_tables(stats, langid, "agree")
    assert agree.languages == ("en", "fr", "de")
    assert agree.labels.tolist() == [0, OTHER, OTHER, OTHER, OTHER]
    fill = combine_token_tables(stats, langid, "fill")
    assert fill.labels.tolist() == [0, 1, 1, 0, 2]


class _WordTokenizer:
    """A stand-in tokenizer whose ids decode to fixed words."""

    words = ["<pad>", "the", "maison", "Haus", "12", "ing", "fenêtre", "und"]

    def __len__(self) -> int:
        return len(self.words)

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


def test_langid_token_table_labels_clear_words_and_skips_short_ones():
    table = langid_token_table(_WordTokenizer(), ["en", "fr", "de"], min_probability=0.5, min_letters=3)
    labels = dict(zip(_WordTokenizer.words, table.labels.tolist()))
    assert labels["maison"] == table.index("fr") and labels["fenêtre"] == table.index("fr")
    assert labels["12"] == OTHER and labels["<pad>"] != table.index("de")
    with pytest.raises(LogitLensError, match="cannot identify"):
        langid_token_table(_WordTokenizer(), ["en", "qq"])


# ---- decoding on random-init models -------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_shares_sum_to_one_and_last_layer_is_the_models_prediction(name):
    """The last layer is not normed twice: its top-k equals the model's own logits' top-k."""
    model = tiny_model(name)
    ids, mask = random_batch(3, 10, seed=1)
    ratio = language_ratio(model, [(ids, mask)], range_table(), "xx", top_k=4)
    assert set(ratio["category"]) == {"en", "target", "other"}
    assert ratio.groupby("layer")["share"].sum().tolist() == pytest.approx([1.0] * dimensions(model).n_layers)
    assert (ratio["n_positions"] == int(mask.sum())).all()

    table = identity_table()
    counts, _ = layer_label_counts(model, ids, mask, table, top_k=4)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    expected = torch.bincount(logits[mask.bool()].topk(4, dim=-1).indices.flatten(), minlength=VOCAB + 1)
    assert torch.equal(counts[-1], expected)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom"])
def test_counts_do_not_depend_on_padding_side(name):
    model = tiny_model(name)
    ids, mask = random_batch(4, 12, seed=2)
    right = layer_label_counts(model, ids, mask, identity_table(), top_k=3)
    left = layer_label_counts(model, *to_padding_side(ids, mask, "left"), identity_table(), top_k=3)
    assert right[1] == left[1] == int(mask.sum())
    assert torch.equal(right[0], left[0])
    # and padding never counts: the same documents one at a time give the same totals
    single = sum(
        layer_label_counts(
            model,
            ids[i : i + 1, : int(mask[i].sum())],
            mask[i : i + 1, : int(mask[i].sum())],
            identity_table(),
            top_k=3,
        )[0]
        for i in range(ids.shape[0])
    )
    assert torch.equal(right[0], single)


@pytest.mark.parametrize("name", ["llama", "opt"])
def test_one_layer_by_hand(name):
    """Brute force: norm, unembed, top-k and attribute each position in Python loops."""
    model = tiny_model(name)
    arch = get_architecture(model)
    table = range_table()
    ids, mask = random_batch(2, 9, seed=3)
    layer, k = 1, 5
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer + 1]
        norm, unembed = model.get_submodule(arch.final_norm), model.get_output_embeddings()
        expected = [0, 0, 0]  # en, xx, other
        for doc in range(ids.shape[0]):
            for pos in range(ids.shape[1]):
                if not mask[doc, pos]:
                    continue
                for token in unembed(norm(hidden[doc, pos])).topk(k).indices.tolist():
                    label = int(table.labels[token])
                    expected[2 if label == OTHER else label] += 1
    counts, n_positions = layer_label_counts(model, ids, mask, table, top_k=k)
    assert counts[layer].tolist() == expected
    assert n_positions * k == sum(expected)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_final_norm_flag_changes_middle_layers_not_the_last(name):
    model = tiny_model(name)
    ids, mask = random_batch(4, 12, seed=4)
    normed, _ = layer_label_counts(model, ids, mask, identity_table(), top_k=5, final_norm=True)
    raw, _ = layer_label_counts(model, ids, mask, identity_table(), top_k=5, final_norm=False)
    assert torch.equal(normed[-1], raw[-1])
    assert all(not torch.equal(normed[i], raw[i]) for i in range(normed.shape[0] - 1))


def test_skip_first_tokens_and_runs_under_deactivation():
    model = tiny_model("llama")
    ids, mask = random_batch(3, 10, seed=5, padding_side="left")
    counts, n = layer_label_counts(model, ids, mask, identity_table(), top_k=2)
    skipped, n_skipped = layer_label_counts(model, ids, mask, identity_table(), top_k=2, skip_first_tokens=1)
    assert n_skipped == n - 3
    assert counts.sum() - skipped.sum() == 3 * 2 * counts.shape[0]
    neurons = [(0, "ffn", i) for i in range(24)] + [(1, "attn_v", i) for i in range(8)]
    with deactivate(model, neurons):
        ablated, n_ablated = layer_label_counts(model, ids, mask, identity_table(), top_k=2)
    assert n_ablated == n and not torch.equal(ablated, counts)
    assert torch.equal(layer_label_counts(model, ids, mask, identity_table(), top_k=2)[0], counts)  # restored


def test_input_errors_name_the_problem():
    model = tiny_model("llama")
    ids, mask = random_batch(2, 6)
    with pytest.raises(LogitLensError, match="'de' is not in the token table"):
        language_ratio(model, [(ids, mask)], range_table(), "de")
    big = TokenLanguages(("en",), torch.zeros(VOCAB + 5, dtype=torch.long))
    with pytest.raises(LogitLensError, match="another tokenizer"):
        layer_label_counts(model, ids, mask, big)
    mask[1] = 0
    with pytest.raises(LogitLensError, match=r"documents \[1\]"):
        layer_label_counts(model, ids, mask, range_table())


def test_english_documents_have_no_target_category_and_tables_concatenate():
    model = tiny_model("gpt2")
    batches = {lang: [random_batch(2, 6, seed=s)] for s, lang in enumerate(RANGES)}
    ratios = language_ratios(model, batches, range_table(), top_k=3)
    assert set(ratios.loc[ratios["language"] == "en", "category"]) == {"en", "other"}
    assert set(ratios.loc[ratios["language"] == "xx", "category"]) == {"en", "target", "other"}
    assert ratios.groupby(["language", "layer"])["share"].sum().tolist() == pytest.approx([1.0] * 6)


def test_batches_from_texts_pads_right_and_skips_empty_texts():
    class CharTokenizer:
        pad_token_id = 0

        def __call__(self, texts, add_special_tokens, truncation, max_length):
            return {"input_ids": [[ord(c) % 90 + 3 for c in text][:max_length] for text in texts]}

    batches = list(batches_from_texts(CharTokenizer(), ["ab", "", "abcdef", "abc"], batch_size=2, max_length=5))
    assert [b[0].shape for b in batches] == [(2, 5), (1, 2)]
    assert batches[0][1].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


# ---- a trained model ----------------------------------------------------------------------------


@contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny models train faster on one thread (and do not fight parallel test runs for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _documents(language: str, n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    lo, hi = RANGES[language]
    return torch.randint(lo, hi, (n, length), generator=gen)


def test_trained_model_last_layer_predicts_the_documents_language():
    """A tiny llama trained on two token-range "languages" decodes L's documents to L at the last layer."""
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with _one_thread():
        for _ in range(100):
            ids = torch.cat([_documents("en", 8, 24, gen), _documents("xx", 8, 24, gen)])
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    counts = {lang: count_tokens(_documents(lang, 16, 24, gen), None, VOCAB) for lang in RANGES}
    table = token_language_table(counts, ratio=5, min_count=2, vocab_size=VOCAB)
    mask = random_batch(6, 20, seed=6)[1]  # ragged documents, right-padded
    ids = _documents("xx", 6, 20, gen) * mask
    ratio = language_ratio(model, [(ids, mask)], table, "xx", top_k=5)
    last = ratio[ratio["layer"] == config.num_hidden_layers - 1].set_index("category")["share"]
    assert last["target"] > 0.5
    assert last["target"] > last["en"]
