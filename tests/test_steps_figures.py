"""The logit-lens and figure steps of the workflow, without Snakemake."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from models import VOCAB, save_tiny_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from langneurons.conditions import deactivated_condition, token_language_names
from langneurons.corpora import write_corpus
from langneurons.interventions import zero_weights_
from langneurons.logit_lens import OTHER, batches_from_texts, language_ratio
from langneurons.plotting import PlotInputError
from langneurons.steps.common import ConfigError
from langneurons.steps.figures import _n_layers, language_ratio_step, neuron_counts_step, overlap_step, stage_sizes
from langneurons.steps.logit_lens import (
    eval_documents,
    load_token_languages,
    logit_lens_step,
    logit_lens_table_step,
    token_languages_step,
)

MODEL = {"demo": True, "dtype": "float32", "device_map": None}
SETTINGS = {"top_k": 5, "final_norm": True, "batch_size": 3, "max_length": 16, "n_docs": None, "skip_first_tokens": 0}
# Words w3..w9 are shared; en uses w10..w49, fr w50..w96.
WORDS = {"en": range(10, 50), "fr": range(50, VOCAB)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


def _corpus(directory, language: str) -> str:
    gen = torch.Generator().manual_seed(len(language) + ord(language[0]))
    words = list(WORDS[language])
    texts = []
    for n in range(6, 20):
        own = [f"w{words[int(i)]}" for i in torch.randint(0, len(words), (n,), generator=gen)]
        texts.append(" ".join(own + ["w3", "w4"]))
    splits = ["detect"] * 6 + ["finetune"] * 2 + ["train"] * 2 + ["eval"] * 4
    docs = pd.DataFrame(
        {
            "doc_id": [f"{language}-{i:03d}" for i in range(len(texts))],
            "language": language,
            "text": texts,
            "split": splits,
            "n_chars": [len(t) for t in texts],
            "align_key": None,
        }
    )
    path = directory / f"{language}.parquet"
    write_corpus(docs, path, path.with_suffix(".manifest.json"), {"test": True})
    return str(path)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    return {language: _corpus(directory, language) for language in WORDS}


@pytest.fixture(scope="module")
def token_table(tmp_path_factory, corpora, model_dir):
    path = tmp_path_factory.mktemp("tokens") / "token_languages.safetensors"
    token_languages_step(corpora, MODEL, model_dir, ["detect", "finetune", "train"], 3.0, 1, str(path))
    return str(path)


# ---- logit lens ---------------------------------------------------------------------------------


def test_english_is_always_labelled_and_conditions_follow_the_set_kind():
    assert token_language_names(["fr", "zh"]) == ["fr", "zh", "en"]
    assert token_language_names(["zh", "en"]) == ["zh", "en"]
    assert deactivated_condition("specific") == ["none", "specific_deactivated"]
    assert deactivated_condition(None) == ["none"]


def test_token_table_attributes_each_corpus_its_own_words(token_table, model_dir):
    table = load_token_languages(token_table)
    assert table.languages == ("en", "fr")
    assert table.vocab_size == len(AutoTokenizer.from_pretrained(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    en_ids = set(table.tokens_of("en").tolist())
    fr_ids = set(table.tokens_of("fr").tolist())
    assert en_ids and fr_ids and en_ids <= {tokenizer.convert_tokens_to_ids(f"w{i}") for i in WORDS["en"]}
    assert fr_ids <= {tokenizer.convert_tokens_to_ids(f"w{i}") for i in WORDS["fr"]}
    shared = [tokenizer.convert_tokens_to_ids(w) for w in ("w3", "w4")]
    assert table.labels[shared].tolist() == [OTHER, OTHER], "words of every corpus belong to no language"
    with safe_open(token_table, framework="pt") as handle:
        record = json.loads(handle.metadata()["provenance"])
        counts = handle.get_tensor("counts")
    assert record["n_docs"] == {"en": 10, "fr": 10}, "eval documents are never counted"
    assert counts.shape == (2, table.vocab_size) and int(counts[0, shared[0]]) == 10


def test_token_table_needs_documents_in_the_counted_splits(tmp_path, corpora, model_dir):
    with pytest.raises(ConfigError, match="no documents in splits"):
        token_languages_step(corpora, MODEL, model_dir, ["nothing"], 3.0, 1, str(tmp_path / "t.safetensors"))


def test_eval_documents_are_the_first_by_doc_id():
    docs = pd.DataFrame({"doc_id": ["b", "a", "c", "d"], "split": ["eval", "eval", "detect", "eval"]})
    assert eval_documents(docs, None)["doc_id"].tolist() == ["a", "b", "d"]
    assert eval_documents(docs, 2)["doc_id"].tolist() == ["a", "b"]


def _neurons():
    rows = [
        ("fr", "specific", layer, site, index) for layer in range(3) for site in ("ffn", "attn_q") for index in (1, 5)
    ]
    rows += [("en", "specific", 0, "ffn", 7), ("fr", "activated", 1, "attn_v", 2)]
    return pd.DataFrame(rows, columns=["language", "set_kind", "layer", "site", "index"])


def test_logit_lens_step_without_and_with_deactivation(tmp_path, corpora, token_table, model_dir):
    neurons_path = tmp_path / "neurons.parquet"
    _neurons().to_parquet(neurons_path, index=False)
    none = logit_lens_step(corpora["fr"], token_table, MODEL, model_dir, "fr", "none", SETTINGS, str(tmp_path / "a"))
    off = logit_lens_step(
        corpora["fr"],
        token_table,
        MODEL,
        model_dir,
        "fr",
        "specific_deactivated",
        SETTINGS,
        str(tmp_path / "b"),
        neurons_path=str(neurons_path),
        set_kind="specific",
    )
    for table, condition, n in ((none, "none", 0), (off, "specific_deactivated", 12)):
        assert set(table["condition"]) == {condition} and set(table["n_neurons_deactivated"]) == {n}
        assert set(table["n_docs"]) == {4} and set(table["category"]) == {"en", "target", "other"}
        assert table.groupby("layer")["share"].sum().round(9).eq(1).all()
    stored = pd.read_parquet(tmp_path / "b")
    assert stored.attrs["provenance"]["doc_ids"] == [f"fr-{i:03d}" for i in range(10, 14)]
    assert stored.drop(columns="set_kind").equals(off.drop(columns="set_kind"))

    # Deactivation through hooks equals decoding a model whose weights of fr's specific neurons are zero.
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    zero_weights_(model, _neurons().query("language == 'fr' and set_kind == 'specific'"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = pd.read_parquet(corpora["fr"]).query("split == 'eval'").sort_values("doc_id")["text"].tolist()
    expected = language_ratio(
        model, batches_from_texts(tokenizer, texts, 3, 16), load_token_languages(token_table), "fr", top_k=5
    )
    assert off["count"].tolist() == expected["count"].tolist()
    assert not off["count"].equals(none["count"]), "zeroing 12 neurons changes some top-5 token"

    both = logit_lens_table_step([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "all.parquet"))
    assert len(both) == len(none) + len(off) and set(both["condition"]) == {"none", "specific_deactivated"}


def test_logit_lens_step_errors_name_the_fix(tmp_path, corpora, token_table, model_dir):
    with pytest.raises(ConfigError, match="needs a neuron table"):
        logit_lens_step(corpora["fr"], token_table, MODEL, model_dir, "fr", "specific_deactivated", SETTINGS, "x")
    no_eval = pd.read_parquet(corpora["en"]).assign(split="detect")
    path = tmp_path / "en.parquet"
    write_corpus(no_eval, path, path.with_suffix(".manifest.json"))
    with pytest.raises(ConfigError, match="split_sizes.eval"):
        logit_lens_step(str(path), token_table, MODEL, model_dir, "en", "none", SETTINGS, str(tmp_path / "o"))


# ---- figures ------------------------------------------------------------------------------------


def test_stage_sizes_follow_the_config_or_scale_with_depth():
    assert stage_sizes(32, {"understanding": None, "generation": None}) == (8, 4)
    assert stage_sizes(3, {}) == (1, 1)
    assert stage_sizes(12, {"understanding": 2, "generation": 5}) == (2, 5)
    with pytest.raises(ValueError, match="leave task layers"):
        stage_sizes(3, {"understanding": 2, "generation": 1})


def _ratios(condition: str) -> pd.DataFrame:
    rows = []
    for language in ("en", "fr"):
        for layer in range(4):
            shares = {"en": 0.5, "other": 0.5} if language == "en" else {"en": 0.2, "target": 0.3, "other": 0.5}
            rows += [(language, layer, c, s, condition) for c, s in shares.items()]
    return pd.DataFrame(rows, columns=["language", "layer", "category", "share", "condition"])


def test_language_ratio_step_draws_one_condition(tmp_path):
    paths = []
    for condition in ("none", "specific_deactivated"):
        paths.append(tmp_path / f"{condition}.parquet")
        _ratios(condition).to_parquet(paths[-1], index=False)
    png, svg = tmp_path / "fig1.png", tmp_path / "fig1.svg"
    assert language_ratio_step(paths[:1], {}, str(png), str(svg)) == (png, svg)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()[:400]
    with pytest.raises(PlotInputError, match="one condition per figure"):
        language_ratio_step(paths, {}, str(png), str(svg))
    with pytest.raises(ValueError, match="side by side"):
        language_ratio_step(paths[:1], {}, str(png), str(tmp_path / "other.svg"))


def test_neuron_figures_count_layers_from_the_summary(tmp_path):
    neurons_path, summary_path = tmp_path / "neurons.parquet", tmp_path / "summary.parquet"
    _neurons().to_parquet(neurons_path, index=False)
    pd.DataFrame({"layer": range(6)}).to_parquet(summary_path, index=False)
    assert _n_layers(_neurons(), str(summary_path)) == 6, "layers without neurons still count"
    assert _n_layers(_neurons(), None) == 3
    paths = (str(tmp_path / "fig2.png"), str(tmp_path / "fig2.svg"))
    neuron_counts_step(str(neurons_path), str(summary_path), "specific", "site", {}, *paths)
    overlap_step(str(neurons_path), "specific", str(tmp_path / "fig3.png"), str(tmp_path / "fig3.svg"))
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("fig2.png", "fig2.svg", "fig3.png", "fig3.svg"))
    (tmp_path / "fig2.png").unlink()
    neuron_counts_step(str(neurons_path), str(summary_path), "exclusive", "site", {}, *paths)
    assert (tmp_path / "fig2.png").exists(), "an empty set kind gives a figure that says so, not a failed run"


def figure_paths(directory, name: str) -> tuple[str, str]:
    return str(directory / f"{name}.png"), str(directory / f"{name}.svg")


def test_grid_figures_from_the_workflow_tables(tmp_path):
    from langneurons.steps.figures import (
        ablation_figure_step,
        finetune_figure_step,
        finetune_phases,
        stability_figure_step,
    )

    rows = []
    for condition, control, factor in (("none", "real", 1.0), ("all", "real", 2.0), ("all", "random", 1.01)):
        for language in ("fr", "de"):
            for metric, value in (("perplexity", 10.0), ("continuation", 0.5)):
                rows.append(
                    {"condition": condition, "detector": "plnd", "set_kind": "specific", "target_language": "fr",
                     "control": control, "seed": 0, "eval_language": language, "metric": metric,
                     "value": value * factor, "n_neurons_deactivated": 4}
                )  # fmt: skip
    pd.DataFrame(rows).to_parquet(tmp_path / "grid.parquet")
    for metric in ("perplexity", "continuation"):
        ablation_figure_step(str(tmp_path / "grid.parquet"), metric, *figure_paths(tmp_path, "a"))
        assert (tmp_path / "a.png").stat().st_size > 1000

    results = pd.DataFrame(
        [
            {"method": method, "target_language": "fr", "eval_language": language, "metric": "perplexity",
             "value": value, "n": 3, "trainable_params": 0, "wall_s": 1.0, "tokens": 10}
            for method, value in (("none", 10.0), ("targeted", 9.0), ("full", 8.0))
            for language in ("fr", "de")
        ]
    )  # fmt: skip
    phases = finetune_phases(results)
    assert phases.loc[phases["phase"] == "before", "method"].isna().all()
    assert set(phases.loc[phases["phase"] == "after", "method"]) == {"targeted", "full"}
    results.to_parquet(tmp_path / "results.parquet")
    finetune_figure_step(str(tmp_path / "results.parquet"), "perplexity", *figure_paths(tmp_path, "f"))
    assert (tmp_path / "f.png").stat().st_size > 1000
    with pytest.raises(PlotInputError, match="add it to finetune.methods"):
        finetune_phases(results[results["method"] != "none"])

    stability = pd.DataFrame(
        {"language": ["fr", "fr", "de", "de"], "n_docs": [2, 4, 2, 4], "replicate": 0, "jaccard": [0.5, 1, 0.4, 1],
         "kind": ["halves", "subsample", "halves", "subsample"]}
    )  # fmt: skip
    stability.to_parquet(tmp_path / "stability.parquet")
    stability_figure_step(str(tmp_path / "stability.parquet"), "specific", *figure_paths(tmp_path, "s"))
    assert (tmp_path / "s.png").stat().st_size > 1000
