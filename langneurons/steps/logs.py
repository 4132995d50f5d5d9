"""A step's log: what a workflow job prints goes to its Snakemake log file."""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path


@contextmanager
def logged(log_paths: Sequence[str]) -> Iterator[None]:
    """Send a step's output (progress bars, warnings, its traceback) to its Snakemake log."""
    if not log_paths:
        yield
        return
    path = Path(log_paths[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            yield
        except BaseException:
            traceback.print_exc()
            raise
