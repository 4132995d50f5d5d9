"""Checked readers (a damaged file names itself, its rule and the fix) and writers killed half-way."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from langneurons.corpora import read_corpus
from langneurons.io import (
    CorruptFileError,
    atomic_path,
    read_json,
    read_parquet,
    read_safetensors,
    write_json_atomic,
    write_parquet_atomic,
)
from langneurons.steps.scoring import load_scores


def _damaged(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "overwritten":  # other bytes of the same length
        path.write_bytes(bytes(reversed(data)))
    else:  # a few bytes scribbled over near the start; the file's framing is intact
        path.write_bytes(data[:4] + b"\xff" * 4 + data[8:])


def _snakemake_record(workdir, output: str, rule: str) -> None:
    """The per-output record Snakemake keeps under .snakemake/metadata (one file named by base64 of the path)."""
    metadata = workdir / ".snakemake" / "metadata"
    metadata.mkdir(parents=True, exist_ok=True)
    (metadata / base64.urlsafe_b64encode(output.encode()).decode()).write_text(json.dumps({"rule": rule}))


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """One Parquet table, one score shard and one JSON manifest, written as the workflow writes them."""
    monkeypatch.chdir(tmp_path)
    table = pd.DataFrame({"doc_id": ["fr:1", "fr:2"], "text": ["un", "deux"], "split": ["detect", "eval"]})
    write_parquet_atomic(table, "results/corpus/fr.parquet")
    shard = "results/scores/fr/shard0-of-1.safetensors"
    os.makedirs(os.path.dirname(shard))
    save_file({"ffn": torch.ones(2, 3, 4)}, shard, metadata={"doc_ids": json.dumps(["fr:1", "fr:2"])})
    write_json_atomic({"sha256": "abc"}, "results/corpus/fr.manifest.json")
    return tmp_path


READERS = {
    "results/corpus/fr.parquet": [read_parquet, read_corpus],
    "results/scores/fr/shard0-of-1.safetensors": [read_safetensors, lambda path: load_scores([path])],
    "results/corpus/fr.manifest.json": [read_json],
}


@pytest.mark.parametrize("how", ["truncated", "empty", "overwritten", "scribbled"])
@pytest.mark.parametrize("path", list(READERS))
def test_a_damaged_output_names_the_file_and_how_to_remake_it(outputs, path, how):
    for reader in READERS[path]:
        reader(path)  # intact: reads
    _damaged(outputs / path, how)
    for reader in READERS[path]:
        with pytest.raises(CorruptFileError) as error:
            reader(path)
        message = str(error.value)
        assert message.startswith(f"{path} is damaged and cannot be read (")
        assert f"Delete it, or rerun with `--forcerun {path}`" in message
        assert "written by a workflow rule (or by you)" in message


def test_a_damaged_output_names_the_rule_snakemake_recorded_for_it(outputs):
    path = "results/scores/fr/shard0-of-1.safetensors"
    _snakemake_record(outputs, path, "score_shard")
    _snakemake_record(outputs, "results/corpus/fr.parquet", "sample_corpus")
    _damaged(outputs / path, "truncated")
    with pytest.raises(CorruptFileError, match=rf"^{path} is damaged .* It was written by rule score_shard;"):
        read_safetensors(path)
    with pytest.raises(CorruptFileError, match="written by rule score_shard"):
        read_safetensors(outputs / path)  # an absolute path finds the record of the relative one


def test_a_missing_file_is_not_called_damaged(outputs):
    for path, readers in READERS.items():
        for reader in readers:
            with pytest.raises(FileNotFoundError):
                reader(path.replace("fr", "de"))


def _kill_mid_write(path, directory: bool = False) -> None:
    """A process that starts an atomic write of ``path`` and is SIGKILLed before it finishes."""
    opener = "atomic_dir" if directory else "atomic_path"
    write = "(tmp / 'model.safetensors').write_bytes(b'half')" if directory else "tmp.write_bytes(b'half')"
    script = textwrap.dedent(f"""
        import os, signal
        from langneurons.io import atomic_dir, atomic_path
        with {opener}({str(path)!r}) as tmp:
            {write}
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == -signal.SIGKILL


def test_a_writer_killed_half_way_leaves_no_output_and_its_temporary_is_cleared_by_the_next(tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    target = tmp_path / "out" / "table.parquet"
    _kill_mid_write(target)
    leftovers = list((tmp_path / "out").iterdir())
    assert not target.exists() and len(leftovers) == 1 and leftovers[0].name.startswith(".table.parquet.")

    # a live writer's temporary is left alone; the killed one's goes with the next write
    with atomic_path(tmp_path / "out" / "table.parquet") as live:
        live.write_bytes(b"x")
        write_parquet_atomic(pd.DataFrame({"a": [1]}), target)
        assert live.exists() and not leftovers[0].exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table.parquet"]
    assert target.read_bytes() == b"x", "the last complete write wins"

    model = tmp_path / "model"
    _kill_mid_write(model, directory=True)
    assert not model.exists() and len(list(tmp_path.glob(".model.*"))) == 1
    _kill_mid_write(model, directory=True)
    assert len(list(tmp_path.glob(".model.*"))) == 1, "the second writer cleared the first one's folder"
