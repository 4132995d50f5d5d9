"""The tiny workflow through the SLURM profile, on the real one-node cluster of .ci/slurm/start.sh."""

from __future__ import annotations

import pytest
from slurm_helpers import (
    ensure_slurm,
    slurm_job_ids_since,
    slurm_jobs_since,
    slurm_marker,
    snakemake_slurm_job_ids,
    snakemake_slurm_run_id,
)
from test_workflow import Workflow

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]


def test_tiny_workflow_runs_its_model_jobs_through_slurm(tmp_path):
    assert ensure_slurm(), (
        "no SLURM cluster: start the local one with `bash .ci/slurm/start.sh` (root; installs slurm-wlm and munge), "
        "or deselect these tests with -m 'not slurm'"
    )
    flow = Workflow(tmp_path)
    marker = slurm_marker()
    # Up to the neuron sets: every kind of model job (the demo model, sharded scoring) goes through
    # SLURM, and CI stays short; the later stages use the same executor settings.
    neurons = f"results/{flow.tiny['run']}/neurons/neurons.parquet"
    done = flow.run(neurons, profile="slurm")
    log = done.stdout + done.stderr
    submitted = snakemake_slurm_job_ids(log)
    run_id = snakemake_slurm_run_id(log)
    # the demo model and the 6 score shards are cluster jobs; sampling, counting and sets are local rules
    assert len(submitted) == 7, log[-3000:]
    finished = slurm_job_ids_since(marker, name=run_id, state="COMPLETED")
    assert set(submitted) <= set(finished), (submitted, slurm_jobs_since(marker))
    assert (flow.results / "neurons" / "neurons.parquet").exists()
    assert flow.planned(neurons) == []
