"""Benchmarks on local fixtures in each dataset's format, and the dispatcher (langneurons.evaluation.tasks)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from evaluation_helpers import brute_choice_logprob, char_tokenizer, corpus
from models import tiny_model

from langneurons import evaluation as E
from langneurons.evaluation import tasks
from langneurons.evaluation.benchmarks import _benchmark_records
from langneurons.evaluation.generation import _cut_at_stops


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def fixed_generations(monkeypatch, outputs: list[str]):
    """Replace the model's greedy generations; records the prompts it was asked for."""
    seen: list = []

    def fake(model, tokenizer, prompts, **kwargs):
        seen.extend(prompts)
        return [_cut_at_stops(o, kwargs.get("stop", ())) for o in outputs[: len(prompts)]]

    monkeypatch.setattr(tasks, "greedy_generate", fake)
    return seen


def write_mgsm(path):
    rows = [("Janet's ducks lay 16 eggs. She sells them for \"$2\" each. How much?", "32"),
            ("A robe takes 2 bolts. How many?", "3"),
            ("Josh buys a house for $80,000. Profit?", "70,000"),
            ("How cold is it?", "-4")]
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for q, a in rows:
            handle.write(f"{q}\t{a}\n")


def test_mgsm_loads_tsv_and_scores_exact_match(tmp_path, tok, llama, monkeypatch):
    write_mgsm(tmp_path / "mgsm_en.tsv")
    records = E.load_benchmark("mgsm", "en", tmp_path)  # directory lookup, juletxara file name
    assert [r["answer"] for r in records] == [32, 3, 70000, -4]
    assert records[0]["question"].startswith("Janet's") and '"$2"' in records[0]["question"]
    real = E.evaluate(llama, tok, "mgsm", tmp_path / "mgsm_en.tsv", "en", max_new_tokens=4, progress=False)
    assert real["n"] == 4 and 0 <= real["value"] <= 1
    seen = fixed_generations(monkeypatch, [" 32 dollars.\n\nQuestion: 99", " It is 3.0", " 70,000", " 4"])
    result = E.evaluate(llama, tok, "mgsm", tmp_path / "mgsm_en.tsv", "en")
    assert result["value"] == 0.75 and result["n"] == 4  # the stop string hides "99"; 4 != -4
    assert result["per_item"]["value"].tolist() == [1, 1, 1, 0]
    assert seen[0].endswith("Question: Janet's ducks lay 16 eggs. She sells them for \"$2\" each. How much?\nAnswer:")
    seen.clear()
    shots = E.evaluate(llama, tok, "mgsm", tmp_path / "mgsm_en.tsv", "en", n_shots=1)
    assert shots["n"] == 3 and seen[0].startswith("Question: Janet's") and " 32\n\nQuestion: A robe" in seen[0]


def test_xquad_squad_json_and_flat_jsonl(tmp_path, tok, llama, monkeypatch):
    context = "The Broncos won Super Bowl 50 in Santa Clara."
    squad = {"data": [{"title": "SB", "paragraphs": [{"context": context, "qas": [
        {"id": "1", "question": "Who won?", "answers": [{"text": "The Broncos", "answer_start": 0}]},
        {"id": "2", "question": "Where?", "answers": [{"text": "Santa Clara", "answer_start": 33}]}]}]}]}
    (tmp_path / "xquad.en.json").write_text(json.dumps(squad), encoding="utf-8")
    flat = [{"id": "1", "context": "北京是首都。", "question": "首都?",
             "answers": {"text": ["北京"], "answer_start": [0]}}]
    (tmp_path / "xquad.zh.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in flat),
                                            encoding="utf-8")
    assert E.load_benchmark("xquad", "en", tmp_path)[1]["answers"] == ["Santa Clara"]
    real = E.evaluate(llama, tok, "xquad", tmp_path, "en", max_new_tokens=4, progress=False)
    assert real["n"] == 2
    seen = fixed_generations(monkeypatch, [" Broncos\nQuestion", " in Santa Clara, California"])
    result = E.evaluate(llama, tok, "xquad", tmp_path, "en")
    # F1: 1.0 (article removed) and P = 2/4, R = 1 -> 2/3
    assert result["value"] == pytest.approx((1 + 2 / 3) / 2) and result["exact_match"] == 0.5
    assert result["per_item"]["value"].tolist() == pytest.approx([1, 2 / 3])
    assert result["per_item"]["exact_match"].tolist() == [1, 0]
    assert tok.decode(seen[0], skip_special_tokens=True) == f"{context}\n\nQuestion: Who won?\nAnswer:"
    fixed_generations(monkeypatch, ["北京大学"])
    assert E.evaluate(llama, tok, "xquad", tmp_path, "zh")["value"] == pytest.approx(2 / 3)


def test_xquad_prompt_is_shortened_in_the_passage_not_the_question(tmp_path, tok, llama, monkeypatch):
    record = {"context": "word " * 300, "question": "Which word?", "answers": {"text": ["word"], "answer_start": [0]}}
    seen = fixed_generations(monkeypatch, ["word"])
    E.evaluate(llama, tok, "xquad", [record], "en", max_new_tokens=16)
    assert len(seen[0]) <= 128 - 16 and seen[0][0] == tok.bos_token_id
    prompt = tok.decode(seen[0], skip_special_tokens=True)
    assert prompt.startswith("word word") and prompt.endswith("\n\nQuestion: Which word?\nAnswer:")


def test_xcopa_formats_and_matches_brute_force(tmp_path, tok):
    model = tiny_model("opt")
    records = [
        {"premise": "The item was wrapped.", "choice1": "It was fragile.", "choice2": "It was small.",
         "question": "cause", "label": 0, "idx": 0},
        {"premise": "I emptied my pockets.", "choice1": "I found a ticket.", "choice2": "I found a key.",
         "question": "effect", "label": 1, "idx": 1},
        {"premise": "我爱北京。", "choice1": "北京是一", "choice2": "我在北京", "question": "cause", "label": 0},
    ]
    (tmp_path / "test.en.jsonl").write_text("\n".join(json.dumps(r) for r in records[:2]), encoding="utf-8")
    assert E.xcopa_item(records[0], "en", E.XCOPA_CONNECTORS["en"]) == (
        "The item was wrapped because", [" it was fragile.", " it was small."])
    assert E.xcopa_item(records[2], "zh", E.XCOPA_CONNECTORS["zh"]) == ("我爱北京因为", ["北京是一", "我在北京"])
    result = E.evaluate(model, tok, "xcopa", tmp_path, "en", progress=False)
    correct = 0
    for record, detail in zip(records[:2], result["details"]):
        context, choices = E.xcopa_item(record, "en", E.XCOPA_CONNECTORS["en"])
        scores = [brute_choice_logprob(model, tok, context, c) for c in choices]
        np.testing.assert_allclose(detail["logprob_sum"], scores, rtol=1e-5)
        correct += int(np.argmax(scores)) == record["label"]
    assert result["value"] == correct / 2 and result["n"] == 2
    with pytest.raises(E.EvaluationError, match="connector"):
        E.evaluate(model, tok, "xcopa", records[:2], "de")
    assert E.evaluate(model, tok, "xcopa", records[:2], "de", connectors={"cause": "weil", "effect": "also"},
                      progress=False)["n"] == 2


def test_xcsqa_both_layouts(tmp_path, tok):
    model = tiny_model("gpt_neox")
    original = {"id": "q1", "lang": "en", "question": {"stem": "Where is a cat?", "choices": [
        {"label": "A", "text": "bed"}, {"label": "B", "text": "sky"}, {"label": "C", "text": "sea"}]},
        "answerKey": "A"}
    hub = {"id": "q1", "lang": "en", "question": {"stem": "Where is a cat?", "choices": {
        "label": ["A", "B", "C"], "text": ["bed", "sky", "sea"]}}, "answerKey": "A"}
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "dev.jsonl").write_text(json.dumps(original), encoding="utf-8")
    assert E.load_benchmark("xcsqa", "en", tmp_path) == _benchmark_records("xcsqa", [hub], "en", None, None)
    result = E.evaluate(model, tok, "xcsqa", tmp_path, "en", progress=False)
    scores = [brute_choice_logprob(model, tok, "Question: Where is a cat?\nAnswer:", " " + c) for c in
              ("bed", "sky", "sea")]
    np.testing.assert_allclose(result["details"][0]["logprob_sum"], scores, rtol=1e-5)
    assert result["value"] == float(np.argmax(scores) == 0)
    with pytest.raises(E.EvaluationError, match="answerKey"):
        E.evaluate(model, tok, "xcsqa", [dict(hub, answerKey="")], "en")


def test_xlsum_rouge_l(tmp_path, tok, llama, monkeypatch):
    rows = [{"id": "1", "text": "A long article about cats. " * 40, "summary": "the cat was under the bed"},
            {"id": "2", "text": "我爱北京。", "summary": "我在北京"}]
    (tmp_path / "english_test.jsonl").write_text(json.dumps(rows[0]), encoding="utf-8")
    (tmp_path / "chinese_simplified_test.jsonl").write_text(json.dumps(rows[1], ensure_ascii=False),
                                                           encoding="utf-8")
    real = E.evaluate(llama, tok, "xlsum", tmp_path, "en", max_new_tokens=6, progress=False)
    assert real["n"] == 1
    seen = fixed_generations(monkeypatch, ["the cat was found under the bed\nmore"])
    result = E.evaluate(llama, tok, "xlsum", tmp_path, "en")
    assert result["value"] == pytest.approx(12 / 13)
    assert result["per_item"][["value", "precision", "recall"]].values.tolist() == [pytest.approx([12 / 13, 6 / 7, 1])]
    prompt = tok.decode(seen[0], skip_special_tokens=True)
    assert prompt.startswith("Article: A long article") and prompt.endswith("\nSummary:")  # article cut, not the cue
    fixed_generations(monkeypatch, ["我爱北京"])
    assert E.evaluate(llama, tok, "xlsum", tmp_path, "zh")["value"] == pytest.approx(3 / 4)


def test_benchmark_errors(tmp_path, tok, llama, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(E.MissingDataError, match=r"'mgsm'.*juletxara/mgsm.*Fix: pass data="):
        E.evaluate(llama, tok, "mgsm", None, "fr")
    with pytest.raises(E.EvaluationError, match="has no language 'xx'"):
        E.load_benchmark("xcopa", "xx")
    with pytest.raises(E.EvaluationError, match="looked for"):
        E.load_benchmark("mgsm", "de", tmp_path)
    (tmp_path / "en.jsonl").write_text(json.dumps({"id": "0-0", "text": "A paragraph."}), encoding="utf-8")
    with pytest.raises(E.EvaluationError, match="document corpus"):
        E.load_benchmark("xquad", "en", tmp_path / "en.jsonl")
    (tmp_path / "empty.tsv").write_text("", encoding="utf-8")
    with pytest.raises(E.EvaluationError, match="empty"):
        E.load_benchmark("mgsm", "en", tmp_path / "empty.tsv")
    with pytest.raises(E.EvaluationError, match="cause or effect"):
        E.evaluate(llama, tok, "xcopa", [{"premise": "p", "choice1": "a", "choice2": "b", "question": "why",
                                          "label": 0}], "en")


def test_load_documents_reads_shared_layouts(tmp_path):
    lines = [{"article": 0, "title": "T", "para": 0, "id": "0-0", "text": "\ufeffFirst\u200b paragraph."},
             {"article": 0, "title": "T", "para": 1, "id": "0-1", "text": "Second."}]
    (tmp_path / "de.jsonl").write_text("\n".join(json.dumps(r) for r in lines), encoding="utf-8")
    docs = E.load_documents(tmp_path / "de.jsonl")
    assert docs["text"].tolist() == ["First paragraph.", "Second."]
    assert docs["align_key"].tolist() == ["0-0", "0-1"] and set(docs["language"]) == {"de"}
    assert set(docs["split"]) == {"eval"} and docs["n_chars"].tolist() == [16, 7]
    with open(tmp_path / "zh.tsv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["flores_index", "sib_split", "category", "text"])
        writer.writerow(["0", "train", "health", "我爱北京。"])
        writer.writerow(["7", "test", "science", '他说"好"。'])
    with open(tmp_path / "zh.tsv", "a", encoding="utf-8") as handle:
        handle.write('8\ttest\tscience\t他说"好"了。\n')  # an unquoted field keeps its quotes
    sentences = E.load_documents(tmp_path / "zh.tsv")
    assert sentences["align_key"].tolist() == ["0", "7", "8"]
    assert sentences["text"].tolist()[1:] == ['他说"好"。', '他说"好"了。']


def test_dispatcher_rows_and_errors(llama, tok):
    docs = corpus(languages=("en", "fr"))
    row = E.evaluate(llama, tok, "perplexity", docs, "en", progress=False)
    texts = docs[(docs.language == "en") & (docs.split == "eval")]["text"].tolist()
    assert row["value"] == pytest.approx(E.perplexity(llama, tok, texts, progress=False).perplexity)
    assert (row["metric"], row["language"], row["n"]) == ("perplexity", "en", len(texts))
    table = E.results_table([row, E.evaluate(llama, tok, "perplexity", docs, "fr", limit=2, progress=False)])
    assert list(table.columns[:4]) == ["metric", "language", "value", "n"] and "details" not in table
    assert table["n"].tolist() == [8, 2]

    with pytest.raises(E.EvaluationError, match="metric 'bleu' is unknown"):
        E.evaluate(llama, tok, "bleu", docs, "en")
    with pytest.raises(E.EvaluationError, match=r"no option\(s\) \['n_item'\]"):
        E.evaluate(llama, tok, "continuation", docs, "en", n_item=3)
    for metric in ("perplexity", "continuation", "fidelity"):
        with pytest.raises(E.MissingDataError, match=rf"metric '{metric}'.*data is None. Fix: pass data="):
            E.evaluate(llama, tok, metric, None, "en")
    with pytest.raises(E.EvaluationError, match="no documents of language 'de'"):
        E.evaluate(llama, tok, "perplexity", docs, "de")
    assert set(E.METRICS) >= {"perplexity", "continuation", "fidelity", "mgsm", "xquad", "xcopa", "xcsqa", "xlsum"}
