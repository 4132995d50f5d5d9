"""Workflow steps without Snakemake: sharded scoring merges exactly, provenance, step-time errors."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from models import VOCAB, save_tiny_model
from safetensors import safe_open

from langneurons.architectures import UnsupportedArchitectureError
from langneurons.corpora import write_corpus
from langneurons.selection import ActivationCounts
from langneurons.steps.common import ConfigError, load_model
from langneurons.steps.neurons import count_activations_step
from langneurons.steps.scoring import score_shard_step

SCORING = {"method": "paper", "sites": ["ffn", "attn_q", "attn_k", "attn_v"], "batch_size": 3, "max_length": 16}
TOP_K = {"ffn": 0.25, "attn_q": 0.25, "attn_k": 0.25, "attn_v": 0.25}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


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


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpora")
    paths = {}
    for number, language in enumerate(["fr", "de"]):
        gen = torch.Generator().manual_seed(10 + number)
        texts = [" ".join(f"w{int(t)}" for t in torch.randint(3, VOCAB, (12,), generator=gen)) for _ in range(10)]
        docs = pd.DataFrame(
            {
                "doc_id": [f"{language}-{i:03d}" for i in range(10)],
                "language": language,
                "text": texts,
                "split": ["detect"] * 4 + ["finetune"] * 3 + ["eval"] * 3,
                "n_chars": [len(t) for t in texts],
                "align_key": None,
            }
        )
        paths[language] = str(folder / f"{language}.parquet")
        write_corpus(docs, paths[language], folder / f"{language}.manifest.json")
    neurons = pd.DataFrame(
        {
            "language": "fr", "set_kind": "specific", "layer": [0, 1, 2, 2], "site": ["ffn", "attn_q", "ffn", "attn_v"],
            "index": [3, 5, 7, 1], "frequency": 1.0, "mean_importance": 1.0,
        }
    )  # fmt: skip
    neurons_path = str(folder / "neurons.parquet")
    neurons.to_parquet(neurons_path)
    return paths, neurons_path


EVALUATION = {"metrics": ["perplexity"], "n_docs": 3, "n_items": 2, "max_length": 16, "batch_size": 2, "seed": 0}


def test_ablation_cells_and_grid(tmp_path, two_corpora, model_dir):
    from langneurons.steps.ablation import ablation_cell_step, ablation_grid_step

    corpora, neurons_path = two_corpora
    cells, per_item = [], {}
    for condition, control in [("none", None), ("all", None), ("all", 0)]:
        cell = {"condition": condition, "detector": "plnd", "set_kind": "specific", "target_language": "fr",
                "control_seed": control}  # fmt: skip
        out = tmp_path / f"{condition}-{control}.parquet"
        items = tmp_path / f"{condition}-{control}.items.parquet"
        ablation_cell_step(corpora, neurons_path, MODEL, model_dir, cell, {"understanding": 1, "generation": 1},
                           EVALUATION, str(out), str(tmp_path / f"{condition}-{control}.json"), str(items))  # fmt: skip
        cells.append(str(out))
        per_item[condition, control] = pd.read_parquet(items)
    ablation_grid_step(cells, str(tmp_path / "grid.parquet"))
    grid = pd.read_parquet(tmp_path / "grid.parquet")
    assert set(grid["eval_language"]) == {"fr", "de"} and set(grid["metric"]) == {"perplexity"}
    assert grid.groupby(["condition", "control"])["n_neurons_deactivated"].first().to_dict() == {
        ("all", "random"): 4, ("all", "real"): 4, ("none", "real"): 0,
    }  # fmt: skip
    baseline = grid[grid["condition"] == "none"]
    assert (baseline["ratio_to_baseline"] == 1).all()
    assert (grid[grid["condition"] == "all"]["ratio_to_baseline"] != 1).all(), "deactivation changes perplexity"
    # the per-document table holds every evaluated document and gives back each cell's perplexity
    n_eval = {lang: len(pd.read_parquet(path).query("split == 'eval'").head(EVALUATION["n_docs"]))
              for lang, path in corpora.items()}  # fmt: skip
    for (condition, control), items in per_item.items():
        assert items.groupby("eval_language")["item"].apply(sorted).to_dict() == {
            lang: list(range(n)) for lang, n in n_eval.items()
        }
        cell = grid[(grid["condition"] == condition) & (grid["seed"] == (-1 if control is None else control))]
        for lang, docs in items.groupby("eval_language"):
            expected = cell.loc[cell["eval_language"] == lang, "value"].item()
            assert math.exp(docs["nll"].sum() / docs["n_tokens"].sum()) == pytest.approx(expected, rel=1e-9)


def test_finetune_cells_train_only_what_they_should(tmp_path, two_corpora, model_dir):
    from langneurons.steps.finetune import finetune_cell_step

    corpora, neurons_path = two_corpora
    training = {"lr": 1e-2, "epochs": 1, "batch_size": 2, "grad_accum": 1, "n_docs": 3, "max_length": 16,
                "progress": False}  # fmt: skip
    tables = {}
    for method in ("none", "targeted", "full"):
        artefact = tmp_path / method
        finetune_cell_step(corpora, neurons_path, MODEL, model_dir, "fr", method, "specific", training, 0,
                           EVALUATION, str(artefact), str(tmp_path / f"{method}.parquet"))  # fmt: skip
        tables[method] = pd.read_parquet(tmp_path / f"{method}.parquet").set_index("eval_language")
    assert (tmp_path / "targeted" / "delta.safetensors").exists()
    assert tables["none"]["trainable_params"].iloc[0] == 0
    assert 0 < tables["targeted"]["trainable_params"].iloc[0] < tables["full"]["trainable_params"].iloc[0]
    assert tables["targeted"].loc["fr", "value"] != tables["none"].loc["fr", "value"]
    with pytest.raises(ConfigError, match="finetune.n_docs=5 but 'fr' has 3 finetune documents"):
        finetune_cell_step(
            corpora, neurons_path, MODEL, model_dir, "fr", "targeted", "specific", {**training, "n_docs": 5}, 0,
            EVALUATION, str(tmp_path / "x"), str(tmp_path / "x.parquet"),
        )  # fmt: skip


def test_an_empty_condition_is_a_nan_cell_and_detectors_match_their_sets(tmp_path, two_corpora, model_dir):
    from langneurons.steps.ablation import ablation_cell_step

    corpora, neurons_path = two_corpora
    stages = {"understanding": 1, "generation": 1}  # 3 layers: the set's only task-stage neuron is attn_q
    cell = {"condition": "task_ffn", "detector": "plnd", "set_kind": "specific", "target_language": "fr",
            "control_seed": None}  # fmt: skip
    out = tmp_path / "cell.parquet"
    ablation_cell_step(corpora, neurons_path, MODEL, model_dir, cell, stages, EVALUATION, str(out),
                       str(tmp_path / "cell.json"))  # fmt: skip
    table = pd.read_parquet(out)
    assert len(table) == 2 and table["value"].isna().all() and (table["n_neurons_deactivated"] == 0).all()
    with pytest.raises(ConfigError, match="LAPE's sets have set kind 'lape'"):
        ablation_cell_step(corpora, neurons_path, MODEL, model_dir, {**cell, "detector": "lape"}, stages,
                           EVALUATION, str(tmp_path / "x.parquet"), str(tmp_path / "x.json"))  # fmt: skip
    assert not (tmp_path / "x.parquet").exists()


def test_neuron_sets_with_lape_agreement_and_stability(tmp_path, two_corpora, model_dir):
    from langneurons.selection import lape_neurons_from_counts, set_stability
    from langneurons.steps.neurons import neuron_sets_step, stability_step
    from langneurons.steps.scoring import load_scores

    corpora, _ = two_corpora
    scoring = {**SCORING, "sites": [*SCORING["sites"], "ffn_active", "n_tokens"]}
    shards, counts = {}, {}
    for lang, path in corpora.items():
        shards[lang] = [str(tmp_path / f"{lang}.safetensors")]
        score_shard_step(path, MODEL, model_dir, 0, 1, scoring, shards[lang][0])
        counts[lang] = str(tmp_path / f"{lang}-counts.safetensors")
        count_activations_step(shards[lang], TOP_K, lang, counts[lang])
    lape = {"entropy_quantile": 0.2, "filter_rate": 0.5, "activation_bar_ratio": 0.5}
    out = {name: str(tmp_path / f"{name}.parquet") for name in ("neurons", "summary", "overlap", "agreement")}
    neuron_sets_step(counts, 0.5, ["specific"], {"understanding": 1, "generation": 1}, out["neurons"],
                     out["summary"], out["overlap"], str(tmp_path / "record.json"), lape=lape,
                     agreement_path=out["agreement"])  # fmt: skip
    table = pd.read_parquet(out["neurons"])
    found = table[table["set_kind"] == "lape"].reset_index(drop=True)
    expected = lape_neurons_from_counts({lang: ActivationCounts.load(p) for lang, p in counts.items()}, **lape)
    assert len(found) > 0
    pd.testing.assert_frame_equal(found, expected, check_dtype=False)
    agreement = pd.read_parquet(out["agreement"]).set_index("language")
    def ffn_units(lang, kind):
        rows = table[(table["language"] == lang) & (table["site"] == "ffn") & (table["set_kind"] == kind)]
        return set(zip(rows["layer"], rows["index"]))

    for lang in corpora:
        plnd, lape_set = ffn_units(lang, "specific"), ffn_units(lang, "lape")
        assert agreement.loc[lang, "n_both"] == len(plnd & lape_set)
        union = len(plnd | lape_set)
        jaccard = len(plnd & lape_set) / union if union else float("nan")
        assert agreement.loc[lang, "jaccard"] == pytest.approx(jaccard, nan_ok=True)
    assert json.loads((tmp_path / "record.json").read_text())["config"]["lape"] == lape

    settings = {"set_kind": "specific", "n_docs": [2, "all"], "replicates": 2}
    stability_step(shards, TOP_K, 0.5, settings, 0, str(tmp_path / "stability.parquet"),
                   str(tmp_path / "stability.json"))  # fmt: skip
    stability = pd.read_parquet(tmp_path / "stability.parquet")
    scores = {lang: {k: v for k, v in load_scores(p)[0].items() if k not in ("ffn_active", "n_tokens")}
              for lang, p in shards.items()}  # fmt: skip
    pd.testing.assert_frame_equal(stability, set_stability(scores, TOP_K, 0.5, "specific", [2, "all"], 0, 2))
    assert set(stability["kind"]) == {"halves", "subsample"}
    assert (stability.loc[stability["n_docs"] == 4, "jaccard"] == 1).all(), "all documents against themselves"
