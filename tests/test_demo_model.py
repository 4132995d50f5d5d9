"""The built-in demo model (langneurons.demo_model), at its tiny size."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from langneurons.corpora import sample_corpus
from langneurons.demo_model import (
    DemoModelConfig,
    _lr_factor,
    _schedule_progress,
    evaluate_perplexity,
    train_demo_model,
)

LANGS = ["en", "fr", "zh"]


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    frames = sample_corpus(
        {"source": "demo"}, LANGS, {"eval": 4, "train": 30}, seed=0, filters={"min_chars": 200, "max_chars": 3000}
    )
    return pd.concat(frames.values(), ignore_index=True)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "model"
    config = DemoModelConfig.tiny(progress=False, num_threads=torch.get_num_threads())
    ppl = train_demo_model(corpus[corpus.split == "train"], corpus[corpus.split == "eval"], out, config)
    return out, ppl, config


def test_tiny_model_trains_saves_and_reloads_like_a_hub_model(trained, corpus):
    out, ppl, config = trained
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert isinstance(model, LlamaForCausalLM)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (32, 2, 64)
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    assert cfg.vocab_size == len(tok) <= config.vocab_size
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    for text in ("In the beginning God created", "起初，神创造天地。", "Au commencement, Dieu créa"):
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text  # byte-level: lossless
    # the saved weights are the trained ones: same held-out perplexity after reload
    eval_docs = corpus[corpus.split == "eval"]
    again = evaluate_perplexity(model, tok, eval_docs, config.eval_max_tokens, config.eval_batch_size)
    np.testing.assert_allclose(again["loss"], ppl["loss"], rtol=1e-5)


def test_loss_decreases_and_perplexity_table(trained):
    out, ppl, config = trained
    log = json.loads((out / "training_log.json").read_text())
    losses = log["loss_history"]
    assert len(losses) == config.max_steps and log["stopped_by"] == "max_steps"
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert list(ppl.columns) == ["language", "n_docs", "n_tokens", "loss", "perplexity"]
    assert ppl["language"].tolist() == sorted(LANGS)
    assert (ppl["n_docs"] == 4).all() and (ppl["n_tokens"] > 0).all()
    np.testing.assert_allclose(ppl["perplexity"], np.exp(ppl["loss"]))
    assert (ppl["perplexity"] < log["config"]["vocab_size"] / 2).all()  # far better than uniform
    pd.testing.assert_frame_equal(pd.read_parquet(out / "heldout_perplexity.parquet"), ppl)
    assert log["train_docs_per_language"] == {lang: 30 for lang in LANGS}
    assert log["versions"]["transformers"]


def test_training_is_seeded(corpus, tmp_path):
    train, ev = corpus[corpus.split == "train"], corpus[corpus.split == "eval"]
    logs = []
    for i, seed in enumerate((1, 1, 2)):
        config = DemoModelConfig.tiny(max_steps=4, progress=False, seed=seed)
        train_demo_model(train, ev, tmp_path / str(i), config)
        logs.append(json.loads((tmp_path / str(i) / "training_log.json").read_text())["loss_history"])
    assert logs[0] == logs[1] != logs[2]


def test_refuses_leaky_inputs_and_leaves_no_output(corpus, tmp_path):
    train, ev = corpus[corpus.split == "train"], corpus[corpus.split == "eval"]
    config = DemoModelConfig.tiny(max_steps=2, progress=False)
    with pytest.raises(ValueError, match=r"split\(s\) \['detect', 'eval'\]"):
        leaky = pd.concat([train, ev, ev.assign(split="detect")])
        train_demo_model(leaky, ev, tmp_path / "m", config)
    with pytest.raises(ValueError, match="also occur in train_docs"):
        train_demo_model(pd.concat([train, ev.assign(split="train")]), ev, tmp_path / "m", config)
    with pytest.raises(ValueError, match="unknown key"):
        DemoModelConfig.from_dict({"hidden": 3})
    assert list(tmp_path.iterdir()) == []


def test_schedule_anneals_by_steps_or_by_time_whichever_leads():
    config = DemoModelConfig(max_steps=110, warmup_steps=10, max_seconds=100.0, min_lr_ratio=0.1)
    assert _schedule_progress(config, 60, 10.0, 100.0) == (0.5, False)  # fast machine: steps lead
    progress, time_led = _schedule_progress(config, 20, 60.0, 110.0)  # slow machine: the clock leads
    assert progress == pytest.approx(0.5) and time_led
    assert _schedule_progress(config, 30, 150.0, 100.0) == (1.0, True)
    assert _lr_factor(config, 0.0, 0) == pytest.approx(0.1)  # warmup
    assert _lr_factor(config, 0.0, 10) == pytest.approx(1.0)
    assert _lr_factor(config, 1.0, 50) == pytest.approx(0.1)  # fully annealed at the end
    no_clock = DemoModelConfig(max_steps=110, warmup_steps=10, max_seconds=None)
    assert _schedule_progress(no_clock, 60, 1e9, None) == (0.5, False)
