"""Native (C) kernels, compiled on first use with the system C compiler and loaded with ctypes.

Nothing here is needed for correctness: every kernel has a torch implementation
that runs when no compiler is found, when the build fails, when the compiled
kernel disagrees with the torch implementation on a small self-check, or when
``LANGNEURONS_NATIVE=0`` is set. The shared library is built once per source,
compiler and CPU (``-march=native``) and cached under
``$XDG_CACHE_HOME/langneurons/native`` (``~/.cache/...``; override with
``LANGNEURONS_NATIVE_CACHE``); a build is written to a temporary name and
renamed, so concurrent jobs never load a half-written file.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

_SOURCE_DIR = Path(__file__).parent
#: Flag sets tried in order; the first that compiles is used. OpenMP threads come from
#: the process's OpenMP runtime (torch's, when torch is loaded), so they are torch's threads.
_FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-fno-math-errno"),
    ("-O3", "-march=native", "-fopenmp", "-fno-math-errno"),
    ("-O3", "-fopenmp", "-fno-math-errno"),
    ("-O3", "-fno-math-errno"),
)


def enabled() -> bool:
    """False when ``LANGNEURONS_NATIVE`` is set to 0/false/no/off."""
    return os.environ.get("LANGNEURONS_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU model and its instruction-set flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return platform.machine() + "\n" + "\n".join(sorted(set(wanted)))


def _cache_dir() -> Path:
    configured = os.environ.get("LANGNEURONS_NATIVE_CACHE")
    if configured:
        return Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "langneurons" / "native"


def _compile(compiler: str, source: Path, target: Path) -> tuple[str, ...]:
    """Compile ``source`` into the shared library ``target`` (atomically); returns the flags used."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in _FLAG_SETS:
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.stem + ".", suffix=".tmp")
        os.close(fd)
        command = [compiler, *flags, "-shared", "-fPIC", "-o", temporary, str(source), "-lm"]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
            os.unlink(temporary)
            errors.append(f"{' '.join(command)}: {getattr(error, 'stderr', '') or error}")
            continue
        os.replace(temporary, target)
        return flags
    raise OSError("no flag set compiled:\n" + "\n".join(errors))


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The compiled library of ``<name>.c`` in this package, or ``None`` (with the reason logged)."""
    if not enabled():
        return None
    compiler = _compiler()
    if compiler is None:
        logger.info("no C compiler found (set CC to use one); using the torch implementation of %s", name)
        return None
    source = _SOURCE_DIR / f"{name}.c"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        identity = [source.read_text(encoding="utf-8"), compiler, version, repr(_FLAG_SETS), _cpu_identity()]
        key = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:16]
        for directory in (_cache_dir(), Path(tempfile.gettempdir()) / "langneurons-native"):
            target = directory / f"{name}-{key}.so"
            if target.exists():
                break
            try:
                _compile(compiler, source, target)
                break
            except PermissionError:
                continue
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning("could not build the native %s kernel (%s); using the torch implementation", name, error)
        return None
