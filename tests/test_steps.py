"""Workflow steps without Snakemake: sharded scoring merges exactly, provenance, config checks."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from models import VOCAB, tiny_model
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from langneurons.architectures import UnsupportedArchitectureError
from langneurons.corpora import write_corpus
from langneurons.selection import ActivationCounts
from langneurons.steps.common import ConfigError, check_config, load_model
from langneurons.steps.neurons import count_activations_step
from langneurons.steps.scoring import score_shard_step

SCORING = {"method": "paper", "sites": ["ffn", "attn_q", "attn_k", "attn_v"], "batch_size": 3, "max_length": 16}
TOP_K = {"ffn": 0.25, "attn_q": 0.25, "attn_k": 0.25, "attn_v": 0.25}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>").save_pretrained(path)
    tiny_model("llama").save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    gen = torch.Generator().manual_seed(3)
    texts = [" ".join(f"w{int(t)}" for t in torch.randint(3, VOCAB, (int(n),), generator=gen)) for n in range(4, 15)]
    docs = pd.DataFrame(
        {
            "doc_id": [f"fr-{i:03d}" for i in range(len(texts))],
            "language": "fr",
            "text": texts,
            "split": ["detect"] * 9 + ["eval"] * 2,
            "n_chars": [len(t) for t in texts],
            "align_key": None,
        }
    )
    path = tmp_path_factory.mktemp("corpus") / "fr.parquet"
    write_corpus(docs, path, path.with_suffix(".manifest.json"), {"test": True})
    return str(path)


MODEL = {"demo": True, "dtype": "float32", "device_map": None}


def _counts(tmp_path, corpus, model_dir, n_shards):
    shards = []
    for shard in range(n_shards):
        out = tmp_path / f"shard{shard}-of-{n_shards}.safetensors"
        score_shard_step(corpus, MODEL, model_dir, shard, n_shards, SCORING, str(out))
        shards.append(str(out))
    counts_path = tmp_path / f"counts-{n_shards}.safetensors"
    count_activations_step(shards, TOP_K, "fr", str(counts_path))
    return ActivationCounts.load(counts_path), shards


def test_sharded_scoring_merges_exactly(tmp_path, corpus, model_dir):
    whole, _ = _counts(tmp_path, corpus, model_dir, 1)
    merged, shards = _counts(tmp_path, corpus, model_dir, 3)
    assert whole.n_docs == merged.n_docs == 9
    for site in whole.counts:
        assert torch.equal(whole.counts[site], merged.counts[site]), site
        torch.testing.assert_close(whole.mean_importance(site), merged.mean_importance(site))
    ids = []
    for shard in shards:
        with safe_open(shard, framework="pt") as handle:
            ids += json.loads(handle.metadata()["doc_ids"])
    assert sorted(ids) == [f"fr-{i:03d}" for i in range(9)], "shards are disjoint and cover the detect split"


def test_score_shards_carry_provenance(tmp_path, corpus, model_dir):
    out = tmp_path / "s.safetensors"
    score_shard_step(corpus, MODEL, model_dir, 0, 1, SCORING, str(out))
    with safe_open(str(out), framework="pt") as handle:
        record = json.loads(handle.metadata()["provenance"])
    manifest = json.loads(open(corpus.replace(".parquet", ".manifest.json"), encoding="utf-8").read())
    assert record["config"]["scoring"] == SCORING
    assert record["model"] == "demo" and record["path"] == model_dir
    assert record["corpus_sha256"] == manifest["sha256"]
    assert record["versions"]["transformers"] and record["versions"]["langneurons"]


def test_too_many_shards_is_a_clear_error(tmp_path, corpus, model_dir):
    with pytest.raises(ConfigError, match="shard 9 of 10 .* has no detection documents"):
        score_shard_step(corpus, MODEL, model_dir, 9, 10, SCORING, str(tmp_path / "x.safetensors"))
    assert not list(tmp_path.iterdir()), "no partial output"


def test_unsupported_architecture_fails_before_loading_weights(tmp_path):
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    config.architectures = ["MambaForCausalLM"]
    config.save_pretrained(tmp_path)  # no weights at all: loading them would fail differently
    with pytest.raises(UnsupportedArchitectureError, match="MambaForCausalLM.*LlamaForCausalLM"):
        load_model(str(tmp_path))


def _config(**changes):
    config = {
        "languages": ["en", "fr"],
        "corpus": {"source": {"source": "demo"}},
        "model": {"demo": True, "demo_languages": ["en", "fr", "de"], "id": None},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            config[section][field] = value
        else:
            config[section] = value
    return config


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(languages=["en", "tlh"]), r"languages: \['tlh'\] not available from corpus source 'demo'; it has"),
        (dict(model__demo_languages=["en"]), r"languages \['fr'\] are not in model.demo_languages"),
        (dict(model__demo=False), "model.id is empty while model.demo is false"),
    ],
)
def test_config_checks_name_the_field_and_the_fix(changes, message):
    check_config(_config())
    with pytest.raises(ConfigError, match=message):
        check_config(_config(**changes))
