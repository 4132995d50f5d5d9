"""The tiny workflow through the SLURM GPU profile, on the real one-node cluster of .ci/slurm/start.sh,
whose node declares one stand-in GPU: jobs are submitted with the resources the config and profile ask for."""

from __future__ import annotations

import re

import pytest
import yaml
from slurm_helpers import (
    ensure_slurm,
    scontrol_job,
    slurm_job_ids_since,
    slurm_jobs_since,
    slurm_marker,
    snakemake_slurm_job_ids,
    snakemake_slurm_run_id,
)
from test_workflow import REPO, Workflow

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]
#: The resource group of each rule submitted up to the neuron sets, and whether the profile gives it a GPU.
GROUPS = {
    "train_demo_model": ("demo_model", True),
    "score_shard": ("scoring", True),
    "count_activations": ("sets", False),
}


def _minutes(limit: str) -> int:
    hours, minutes, seconds = (int(part) for part in limit.split(":")[-3:])
    return hours * 60 + minutes + (seconds > 0)


def test_tiny_workflow_runs_through_slurm_with_the_requested_resources(tmp_path):
    assert ensure_slurm(), (
        "no SLURM cluster: start the local one with `bash .ci/slurm/start.sh` (root; installs slurm-wlm and munge), "
        "or deselect these tests with -m 'not slurm'"
    )
    flow = Workflow(tmp_path)
    marker = slurm_marker()
    # Up to the neuron sets: every kind of model job (the demo model, sharded scoring) and the counting
    # jobs go through SLURM, and CI stays short; the later stages use the same executor settings.
    neurons = f"results/{flow.tiny['run']}/neurons/neurons.parquet"
    done = flow.run(neurons, profile="slurm-gpu")
    log = done.stdout + done.stderr
    submitted = snakemake_slurm_job_ids(log)
    run_id = snakemake_slurm_run_id(log)
    # the demo model, the 6 score shards and the 3 counts are cluster jobs; sampling and the sets are local rules
    assert len(submitted) == 10, log[-3000:]
    finished = slurm_job_ids_since(marker, name=run_id, state="COMPLETED")
    assert set(submitted) <= set(finished), (submitted, slurm_jobs_since(marker))
    assert (flow.results / "neurons" / "neurons.parquet").exists()
    assert flow.planned(neurons) == []

    resources = yaml.safe_load((REPO / "config.yaml").read_text())["resources"]
    seen = set()
    for job_id in submitted:
        job = scontrol_job(job_id)
        rule = re.match(r"rule_(\w+?)(_wildcards_|$)", job["Comment"]).group(1)
        group, gets_gpu = GROUPS[rule]
        wanted = resources[group]
        seen.add(rule)
        assert int(job["NumCPUs"]) == wanted["cpus"], (rule, job)
        assert _minutes(job["TimeLimit"]) == wanted["runtime"], (rule, job)
        assert job.get("TresPerJob") == ("gres:gpu:1" if gets_gpu else None), (rule, job)
        memory = int(job["MinMemoryNode"].removesuffix("M"))
        if group == "sets":  # the base plus three times the language's score files
            shards = (flow.results / "scores" / job["Comment"].rsplit("_", 1)[-1]).glob("*.safetensors")
            assert memory == wanted["mem_mb"] + -(-3 * sum(p.stat().st_size for p in shards) // 2**20), job
        else:
            assert memory == wanted["mem_mb"], (rule, job)
    assert seen == set(GROUPS)
