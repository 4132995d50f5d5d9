"""Helpers for tests that run the workflow on the local one-node SLURM cluster.

The cluster is started by ``.ci/slurm/start.sh`` (stopped by ``stop.sh``); it has
no accounting database, so the evidence that a job really went through SLURM
is slurmctld's job completion file (``JobCompType=jobcomp/filetxt``), one line
per finished job::

    JobId=7 UserId=root(0) ... Name=<snakemake run id> JobState=COMPLETED
    Partition=debug ... WorkDir=/tmp/x ... ExitCode=0:0

and, as a fallback, slurmctld's log (``_job_complete: JobId=7 done``).

Typical use in a test::

    from slurm_helpers import (slurm_available, slurm_marker, slurm_job_ids_since,
                               snakemake_slurm_job_ids)

    pytestmark = pytest.mark.skipif(not slurm_available(), reason="no SLURM")

    marker = slurm_marker()
    proc = subprocess.run(["snakemake", "--profile", "profiles/slurm", ...],
                          capture_output=True, text=True)
    submitted = snakemake_slurm_job_ids(proc.stdout + proc.stderr)
    ran = slurm_job_ids_since(marker)
    assert submitted and set(submitted) <= set(ran)

Only the standard library is used, so importing this never fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

#: Where .ci/slurm/start.sh keeps state, logs, the jobcomp file and the PID file.
STATE_DIR = Path(os.environ.get("LN_SLURM_DIR", "/var/lib/langneurons-slurm"))
JOBCOMP_FILE = STATE_DIR / "jobcomp.log"
SLURMCTLD_LOG = STATE_DIR / "log" / "slurmctld.log"

REPO_ROOT = Path(__file__).resolve().parent.parent
START_SCRIPT = REPO_ROOT / ".ci" / "slurm" / "start.sh"
STOP_SCRIPT = REPO_ROOT / ".ci" / "slurm" / "stop.sh"
SLURM_PROFILE = REPO_ROOT / "profiles" / "slurm"

_READY_STATES = {"idle", "mixed"}
_SUBMITTED_RE = re.compile(r"has been submitted with SLURM jobid (\d+)")
_RUN_ID_RE = re.compile(r"SLURM run ID: (\S+)")
_CTLD_DONE_RE = re.compile(r"_job_complete: JobId=(\d+) done")


def _run(cmd: list[str], timeout: float = 10) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_available() -> bool:
    """True if ``sinfo`` answers and at least one node is idle or mixed.

    A node that is fully allocated counts as unavailable (a test would only
    wait); a down/drained node or an unreachable slurmctld gives False.
    """
    if shutil.which("sinfo") is None:
        return False
    proc = _run(["sinfo", "--noheader", "--Node", "--format=%T"])
    if proc is None or proc.returncode != 0:
        return False
    states = {s.strip().rstrip("*~#!%$@^-").lower() for s in proc.stdout.split()}
    return bool(states & _READY_STATES)


def ensure_slurm(timeout: float = 900) -> bool:
    """Start the local cluster with .ci/slurm/start.sh if it is not up.

    Needs root (start.sh installs packages and starts daemons); returns
    :func:`slurm_available` afterwards, False when it cannot try.
    """
    if slurm_available():
        return True
    if os.geteuid() != 0 or not START_SCRIPT.exists():
        return False
    proc = _run(["bash", str(START_SCRIPT)], timeout=timeout)
    return proc is not None and proc.returncode == 0 and slurm_available()


@dataclass(frozen=True)
class SlurmMarker:
    """A point in time in the cluster's records: byte offsets into the jobcomp
    file and the slurmctld log (both only grow while the cluster runs)."""

    jobcomp_offset: int
    ctld_log_offset: int


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def slurm_marker() -> SlurmMarker:
    """Mark "now"; pass the result to :func:`slurm_job_ids_since` later."""
    return SlurmMarker(_size(JOBCOMP_FILE), _size(SLURMCTLD_LOG))


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            if offset > _size(path):  # file was truncated/replaced: read it all
                offset = 0
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def parse_jobcomp_line(line: str) -> dict[str, str]:
    """``"JobId=7 Name=x JobState=COMPLETED ..."`` -> ``{"JobId": "7", ...}``.

    Values never contain spaces in what slurm writes for our jobs except
    possibly the job name, which Snakemake sets to its run UUID (no spaces).
    """
    record: dict[str, str] = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            record[key] = value
    return record


def slurm_jobs_since(marker: SlurmMarker | None = None) -> list[dict[str, str]]:
    """Finished jobs recorded in the jobcomp file since ``marker`` (all if None),
    as dicts of its fields (JobId, Name, JobState, Partition, NodeList, WorkDir,
    ExitCode, StartTime, EndTime, ...), in completion order."""
    offset = marker.jobcomp_offset if marker else 0
    return [
        rec
        for rec in map(parse_jobcomp_line, _read_from(JOBCOMP_FILE, offset).splitlines())
        if "JobId" in rec
    ]


def slurm_job_ids_since(
    marker: SlurmMarker | None = None,
    *,
    name: str | None = None,
    state: str | None = None,
) -> list[str]:
    """IDs of the jobs that finished on the cluster since ``marker``.

    Read from the jobcomp file; if it has no records (e.g. JobComp not
    configured), from slurmctld's log instead. ``name`` keeps only jobs with
    that job name (Snakemake's SLURM run ID, see :func:`snakemake_slurm_run_id`),
    ``state`` only jobs in that final state (e.g. ``"COMPLETED"``); both need the
    jobcomp file.
    """
    jobs = slurm_jobs_since(marker)
    if jobs:
        return [
            j["JobId"]
            for j in jobs
            if (name is None or j.get("Name") == name)
            and (state is None or j.get("JobState") == state)
        ]
    if name is not None or state is not None:
        return []
    offset = marker.ctld_log_offset if marker else 0
    return _CTLD_DONE_RE.findall(_read_from(SLURMCTLD_LOG, offset))


def wait_for_slurm_jobs(
    job_ids: list[str], marker: SlurmMarker | None = None, timeout: float = 30
) -> list[str]:
    """Wait until all ``job_ids`` appear in :func:`slurm_job_ids_since`; return
    the ones still missing after ``timeout`` seconds (empty list = all seen)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = sorted(set(job_ids) - set(slurm_job_ids_since(marker)), key=int)
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


def snakemake_slurm_job_ids(log_text: str) -> list[str]:
    """SLURM job IDs Snakemake reports submitting (``Job 3 has been submitted
    with SLURM jobid 7 (log: ...)``), in order."""
    return _SUBMITTED_RE.findall(log_text)


def snakemake_slurm_run_id(log_text: str) -> str | None:
    """The run UUID the SLURM executor uses as job name (``SLURM run ID: ...``)."""
    match = _RUN_ID_RE.search(log_text)
    return match.group(1) if match else None


def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job <id>`` as a dict of its ``Key=Value`` fields (empty once slurmctld forgot the job,
    MinJobAge after it ended). Holds what SLURM granted: ``NumCPUs``, ``MinMemoryNode`` (e.g. ``8000M``),
    ``TimeLimit`` (``HH:MM:SS``), ``TresPerJob`` (``gres:gpu:1`` for ``--gpus=1``, absent without GPUs),
    and ``Comment``, which Snakemake's SLURM plugin sets to ``rule_<rule>[_wildcards_<values>]``."""
    proc = _run(["scontrol", "show", "job", "--oneliner", str(job_id)])
    if proc is None or proc.returncode != 0:
        return {}
    return parse_jobcomp_line(proc.stdout)
