"""Benchmark data: the hub or local files, one canonical record format per benchmark; local document files."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from langneurons.eval_sources import BENCHMARKS, local_benchmark_file, local_candidates
from langneurons.evaluation.common import EvaluationError, MissingDataError, normalize_language
from langneurons.evaluation.metrics import extract_number


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8-sig") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _read_mgsm_tsv(path: Path) -> list[dict]:
    """MGSM's TSV: ``question<TAB>answer``, no header, no quoting (questions contain quotes)."""
    records = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != 2:
                raise EvaluationError(
                    f"{path}:{line_no} has {len(row)} tab-separated fields; MGSM needs question<TAB>answer"
                )
            records.append({"question": row[0], "answer": row[1]})
    return records


def _flatten_squad(payload: dict) -> list[dict]:
    """SQuAD JSON (``data/paragraphs/qas``) to flat ``context, question, answers`` records."""
    records = []
    for article in payload["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                records.append({"id": qa.get("id"), "context": paragraph["context"], "question": qa["question"],
                                "answers": qa["answers"]})
    return records


def _read_records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        with open(path, encoding="utf-8-sig") as handle:
            payload = json.load(handle)
        if isinstance(payload, dict) and "data" in payload:
            nested = payload["data"] and "paragraphs" in payload["data"][0]
            return _flatten_squad(payload) if nested else payload["data"]
        if isinstance(payload, list):
            return payload
        raise EvaluationError(f"{path} is JSON but neither SQuAD format (data/paragraphs/qas) nor a list of records")
    if suffix == ".parquet":
        return pd.read_parquet(path).to_dict("records")
    if suffix == ".tsv":
        return _read_mgsm_tsv(path)
    raise EvaluationError(f"{path} has an unknown format {suffix!r}; use .jsonl, .json, .parquet or (MGSM) .tsv")


def _local_file(name: str, language: str, source: Path, split: str | None) -> Path:
    if not source.exists():
        raise EvaluationError(f"{name}: data path {str(source)!r} does not exist")
    found = local_benchmark_file(name, language, source, split)
    if found is None:
        raise EvaluationError(
            f"{name}: no file for language {language!r} in {str(source)!r}; looked for "
            f"{local_candidates(name, language, split)}. Pass the file itself as data, or name it like one of these"
        )
    return found


def _hub_records(name: str, language: str, split: str | None) -> list[dict]:
    bench = BENCHMARKS[name]
    config, split = bench.hub_config(language), split or bench.hub_split
    try:
        import datasets

        return list(datasets.load_dataset(bench.hub_path, config, split=split))
    except Exception as error:  # no network, unknown config, ...: say what to do instead
        raise MissingDataError(
            f"metric {name!r} needs its benchmark data for language {language!r}, and loading "
            f"{bench.hub_path!r} (config {config!r}, split {split!r}) from the Hugging Face hub failed "
            f"({type(error).__name__}: {error}). Fix: pass data=<a local file or directory in the same format> "
            "(or make the hub reachable / the dataset cached)"
        ) from error


def _answer_texts(answers: Any) -> list[str]:
    if isinstance(answers, Mapping):
        return [str(t) for t in answers["text"]]
    return [str(a["text"]) if isinstance(a, Mapping) else str(a) for a in answers]


def _require(record: Mapping, fields: Sequence[str], name: str, index: int, hint: str = "") -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise EvaluationError(
            f"{name} record {index} lacks field(s) {missing} (it has {sorted(record)}); {name} needs "
            f"{', '.join(fields)}{hint}"
        )


def _canonical(name: str, record: Mapping, index: int, language: str) -> dict:
    """One benchmark record in this module's canonical form."""
    if name == "mgsm":
        answer = record.get("answer_number", record.get("answer"))
        _require({**record, "answer": answer} if answer is not None else record, ["question", "answer"], name, index)
        value = answer if isinstance(answer, (int, float)) else extract_number(str(answer), "en")
        if value is None:
            raise EvaluationError(f"mgsm record {index} has a non-numeric answer {answer!r}")
        return {"question": str(record["question"]), "answer": float(value)}
    if name == "xquad":
        hint = ("; this looks like a document corpus (id, text): use it with perplexity, continuation or "
                "fidelity through load_documents" if "text" in record and "question" not in record else "")
        _require(record, ["context", "question", "answers"], name, index, hint)
        answers = _answer_texts(record["answers"])
        if not answers:
            raise EvaluationError(f"xquad record {index} has no reference answer")
        return {"context": str(record["context"]), "question": str(record["question"]), "answers": answers}
    if name == "xcopa":
        _require(record, ["premise", "choice1", "choice2", "question", "label"], name, index)
        if record["question"] not in ("cause", "effect"):
            raise EvaluationError(f"xcopa record {index} has question={record['question']!r}; use cause or effect")
        return {k: record[k] for k in ("premise", "choice1", "choice2", "question")} | {"label": int(record["label"])}
    if name == "xcsqa":
        if {"stem", "choices", "label"} <= set(record):  # already canonical (records loaded once, evaluated again)
            return {"stem": str(record["stem"]), "choices": [str(t) for t in record["choices"]],
                    "label": int(record["label"])}  # fmt: skip
        _require(record, ["question", "answerKey"], name, index)
        question = record["question"]
        choices = question["choices"]
        if isinstance(choices, Mapping):  # hub layout: {label: [...], text: [...]}
            labels, texts = list(choices["label"]), list(choices["text"])
        else:  # X-CSR JSONL layout: [{label, text}, ...]
            labels, texts = [c["label"] for c in choices], [c["text"] for c in choices]
        if record["answerKey"] not in labels:
            raise EvaluationError(
                f"xcsqa record {index} has answerKey {record['answerKey']!r} not among its choice labels {labels} "
                "(the hub's test split has no answers; use the validation/dev split)"
            )
        return {"stem": str(question["stem"]), "choices": [str(t) for t in texts],
                "label": labels.index(record["answerKey"])}
    if name == "xlsum":
        _require(record, ["text", "summary"], name, index)
        return {"text": str(record["text"]), "summary": str(record["summary"])}
    raise EvaluationError(f"benchmark {name!r} is unknown; use one of {', '.join(BENCHMARKS)}")


def load_benchmark(
    name: str, language: str, source: str | Path | None = None, *, split: str | None = None, limit: int | None = None
) -> list[dict]:
    """Canonical records of benchmark ``name`` in ``language``.

    ``source``: None loads from the Hugging Face hub (``datasets.load_dataset``);
    a file is read as is; a directory is searched for the usual file names
    (e.g. ``{lang}.tsv`` / ``mgsm_{lang}.tsv`` for MGSM, ``{split}.{lang}.jsonl``
    for XCOPA, SQuAD-format ``xquad.{lang}.json`` for XQuAD).
    """
    if name not in BENCHMARKS:
        raise EvaluationError(f"benchmark {name!r} is unknown; use one of {', '.join(BENCHMARKS)}")
    language = normalize_language(language)
    if source is None:
        if language not in BENCHMARKS[name].languages:
            raise EvaluationError(
                f"{name} has no language {language!r} on the hub; it has {', '.join(BENCHMARKS[name].languages)}"
            )
        raw = _hub_records(name, language, split)
    else:
        raw = _read_records(_local_file(name, language, Path(source), split))
    if limit is not None:
        raw = raw[:limit]
    records = [_canonical(name, record, i, language) for i, record in enumerate(raw)]
    if not records:
        raise EvaluationError(f"{name} data for language {language!r} is empty")
    return records


def _benchmark_records(name: str, data: Any, language: str, split: str | None, limit: int | None) -> list[dict]:
    """Records from whatever the caller passed: None (hub), a path, records, or a DataFrame."""
    if data is None or isinstance(data, (str, Path)):
        return load_benchmark(name, language, data, split=split, limit=limit)
    raw = data.to_dict("records") if isinstance(data, pd.DataFrame) else list(data)
    if limit is not None:
        raw = raw[:limit]
    if not raw:
        raise EvaluationError(f"{name} data for language {language!r} is empty")
    return [_canonical(name, record, i, language) for i, record in enumerate(raw)]


_INVISIBLE_DOC_CHARS = re.compile("[\ufeff\u200b]")


def load_documents(path: str | Path, language: str | None = None, *, split: str = "eval") -> pd.DataFrame:
    """Local aligned documents as a corpus table (doc_id, language, text, split, n_chars, align_key).

    Reads the shared-data layouts: JSONL with ``id, text`` (XQuAD paragraphs,
    Debian handbook; aligned by ``id``), TSV with a header and ``text`` plus
    ``flores_index`` (FLORES sentences; aligned by it), and corpus Parquet.
    The language defaults to the file stem (``fr.jsonl``). U+FEFF/U+200B are
    stripped. Every row gets ``split`` (these files are held-out text).
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"document file {str(path)!r} does not exist")
    language = normalize_language(language or path.stem.split(".")[-1])
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif suffix == ".jsonl":
        frame = pd.DataFrame(_read_jsonl(path))
    elif suffix == ".tsv":
        # CSV quoting as the shared FLORES files use it ("He said ""hi""."); bare quotes stay literal
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    else:
        raise EvaluationError(f"{path} has an unknown format {suffix!r}; use .jsonl, .tsv or .parquet")
    if "text" not in frame.columns:
        raise EvaluationError(f"{path} has no 'text' column (it has {list(frame.columns)})")
    key_column = next((c for c in ("align_key", "id", "flores_index") if c in frame.columns), None)
    keys = frame[key_column].astype(str) if key_column else pd.Series(range(len(frame))).astype(str)
    texts = frame["text"].astype(str).map(lambda t: _INVISIBLE_DOC_CHARS.sub("", t).strip())
    out = pd.DataFrame({
        "doc_id": [f"{language}:{k}" for k in keys],
        "language": language,
        "text": texts.to_numpy(),
        "split": split,
        "n_chars": texts.str.len().to_numpy(),
        "align_key": keys.to_numpy() if key_column else None,
    })
    return out[out["text"] != ""].reset_index(drop=True)
