"""Atomic output writing and provenance records, shared by every step.

Why atomic: the workflow (Snakemake) treats an existing output file as a
finished step. A step killed half-way must therefore never leave a truncated
file at the final path. Every writer here writes to a temporary file in the
*same directory* (so the final ``os.replace`` is a same-filesystem rename,
which POSIX makes atomic) and renames it into place only after the write
succeeded. On any exception the temporary file is removed and the final path
is left as it was.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "atomic_dir",
    "atomic_path",
    "package_versions",
    "provenance",
    "sha256_texts",
    "write_json_atomic",
    "write_parquet_atomic",
]

#: Packages whose versions every provenance record carries.
PROVENANCE_PACKAGES = ("langneurons", "torch", "transformers", "tokenizers", "datasets", "pandas", "pyarrow")


def _default_mode(directory: bool) -> int:
    """The mode a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` on success.

    The caller writes a complete file at the yielded path. If the ``with``
    body raises, the temporary file is deleted and ``path`` is untouched.
    Missing parent directories are created.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, _default_mode(directory=True))
    try:
        yield tmp
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
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
    import hashlib

    h = hashlib.sha256()
    for text in texts:
        data = str(text).encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()
