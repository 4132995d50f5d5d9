"""Atomic output writing, checked reading and provenance records, shared by every step.

Why atomic: the workflow (Snakemake) treats an existing output file as a
finished step. A step killed half-way must therefore never leave a truncated
file at the final path. Every writer here writes to a temporary file in the
*same directory* (so the final ``os.replace`` is a same-filesystem rename,
which POSIX makes atomic) and renames it into place only after the write
succeeded. On any exception the temporary file is removed and the final path
is left as it was. A writer killed outright (SIGKILL, out of memory) cannot
clean up: its temporary is named after the host and process, and the next
writer of the same path removes it once that process is gone.

Why checked reading: a cache file can still be damaged after it was written
(a copy that stopped, a full disk, an edit). The readers here turn the
reader library's error into a :class:`CorruptFileError` that names the file,
the rule that wrote it, and how to remake it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "CorruptFileError",
    "atomic_dir",
    "atomic_path",
    "open_safetensors",
    "package_versions",
    "provenance",
    "read_json",
    "read_parquet",
    "read_safetensors",
    "remove_abandoned_temporaries",
    "sha256_file",
    "sha256_texts",
    "write_json_atomic",
    "write_parquet_atomic",
]

#: The provenance record inside a model folder converted from a GGUF (:func:`langneurons.models.convert_gguf`); every
#: result of that model copies its GGUF entry.
CONVERSION_RECORD = "conversion.json"
#: Packages whose versions every provenance record carries.
PROVENANCE_PACKAGES = (
    "langneurons", "torch", "transformers", "tokenizers", "datasets", "pandas", "pyarrow", "gguf", "accelerate",
)  # fmt: skip


def _default_mode(directory: bool) -> int:
    """The mode a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _temporary_prefix(final: Path) -> str:
    """Temporaries of ``final`` are named after the writing host and process (see the module docstring)."""
    return f".{final.name}.{socket.gethostname()}-{os.getpid()}."


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_abandoned_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``path`` that a writer on this host left when it was killed.

    Only temporaries whose process no longer exists are removed: a live writer's are its own.
    Returns what was removed.
    """
    final = Path(path)
    host = socket.gethostname()
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.{re.escape(host)}-(\d+)\..*\.(tmp|old)$")
    removed = []
    if not final.parent.is_dir():
        return removed
    for candidate in final.parent.iterdir():
        match = pattern.match(candidate.name)
        if match and not _process_exists(int(match.group(1))):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` on success.

    The caller writes a complete file at the yielded path. If the ``with``
    body raises, the temporary file is deleted and ``path`` is untouched.
    Missing parent directories are created.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temporaries(final)
    fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(final), suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _default_mode(directory=False))
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; rename it onto ``path`` on success.

    A directory cannot be ``os.replace``-d over a non-empty one, so an
    existing ``path`` is first renamed aside and deleted only after the new
    directory is in place. On failure the temporary directory is removed and
    ``path`` is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temporaries(final)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(final), suffix=".tmp", dir=final.parent))
    os.chmod(tmp, _default_mode(directory=True))
    try:
        yield tmp
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=_temporary_prefix(final), suffix=".old", dir=final.parent))
            os.replace(final, old / "x")
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _json_default(obj: Any) -> Any:
    """Serialise the non-JSON types that configs and tables commonly hold."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json_atomic(obj: Any, path: str | os.PathLike, *, indent: int = 2) -> Path:
    """Write ``obj`` as UTF-8 JSON (keys sorted, so reruns diff cleanly), atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False, default=_json_default)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return Path(path)


def write_parquet_atomic(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as Parquet (no index), atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def package_versions(packages: tuple[str, ...] = PROVENANCE_PACKAGES) -> dict[str, str | None]:
    """Installed versions (``None`` if absent), read from metadata without importing."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(config: Mapping[str, Any] | None, **extra: Any) -> dict[str, Any]:
    """A provenance record: the config, package versions, the library's folder, a UTC timestamp, and ``extra``.

    Every output manifest embeds one, so that a result can be traced to the
    exact settings and library versions (and which copy of the library) that produced it.
    """
    record: dict[str, Any] = {
        "config": dict(config) if config is not None else None,
        "versions": package_versions(),
        "library": str(Path(__file__).resolve().parent),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(extra)
    return record


def sha256_texts(texts: "pd.Series | list[str]") -> str:
    """SHA-256 over texts in order; each text is length-prefixed so boundaries count."""
    h = hashlib.sha256()
    for text in texts:
        data = str(text).encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 24) -> str:
    """SHA-256 of a file's bytes, read in chunks (a multi-GB weight file never sits in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


# ---- checked reading ----------------------------------------------------------------------------


def producing_rule(path: str | os.PathLike, workdir: str | os.PathLike | None = None) -> str | None:
    """The Snakemake rule that wrote ``path``, from Snakemake's record of it; None when there is none.

    Snakemake keeps one JSON record per output under ``.snakemake/metadata/`` in the working
    directory (where jobs run), named by the URL-safe base64 of the output path as the rule
    spells it (relative to the working directory), in pieces of at most NAME_MAX - 1 characters.
    """
    root = Path(workdir or os.getcwd())
    metadata = root / ".snakemake" / "metadata"
    if not metadata.is_dir():
        return None
    candidates = {os.fspath(path)}
    try:
        candidates.add(os.path.relpath(Path(path).resolve(), root.resolve()))
    except ValueError:  # another drive
        pass
    max_len = os.pathconf(metadata, "PC_NAME_MAX") if os.name == "posix" else 255
    for candidate in candidates:
        key = base64.urlsafe_b64encode(candidate.encode()).decode()
        pieces = [key[i : i + max_len - 1] for i in range(0, len(key), max_len - 1)]
        record = metadata.joinpath(*["@" + piece for piece in pieces[:-1]], pieces[-1])
        try:
            return json.loads(record.read_text(encoding="utf-8")).get("rule")
        except (OSError, ValueError):
            continue
    return None


class CorruptFileError(OSError):
    """A file exists but cannot be read; the message names it, the rule that wrote it and the fix."""


def corrupt_file_error(path: str | os.PathLike, error: BaseException) -> CorruptFileError:
    """The :class:`CorruptFileError` for ``path``, which its reader failed on with ``error``."""
    rule = producing_rule(path)
    maker = f"rule {rule}" if rule else "a workflow rule (or by you)"
    return CorruptFileError(
        f"{os.fspath(path)} is damaged and cannot be read ({type(error).__name__}: {error}). "
        f"It was written by {maker}; an interrupted copy, a full disk or an edit can leave it so. "
        f"Delete it, or rerun with `--forcerun {os.fspath(path)}`, "
        "and the workflow writes it anew."
    )


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """``pd.read_parquet``, with a damaged file reported as :class:`CorruptFileError`."""
    import pyarrow as pa

    try:
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as error:
        raise corrupt_file_error(path, error) from error


@contextmanager
def open_safetensors(path: str | os.PathLike) -> Iterator[Any]:
    """``safetensors.safe_open`` (PyTorch tensors), with a damaged file reported as :class:`CorruptFileError`.

    Reads inside the ``with`` body (``get_tensor``) are checked too.
    """
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"{os.fspath(path)} does not exist")
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            yield handle
    except SafetensorError as error:
        raise corrupt_file_error(path, error) from error


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Every tensor of a safetensors file and its header metadata, checked like :func:`open_safetensors`."""
    with open_safetensors(path) as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file the workflow wrote, with a damaged file reported as :class:`CorruptFileError`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise corrupt_file_error(path, error) from error
