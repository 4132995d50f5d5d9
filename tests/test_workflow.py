"""The Snakemake workflow on the tiny config: one real run, then what each change reschedules.

The workflow files are copied to a temporary folder, so that the test that edits a
library module edits the copy. The run's jobs import the installed package.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "config.yaml", "rules", "workflow_scripts", "schemas", "profiles", "langneurons")
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

pytestmark = pytest.mark.workflow


class Workflow:
    def __init__(self, root: Path):
        self.repo = root / "repo"
        self.workdir = root / "run"
        self.repo.mkdir()
        self.workdir.mkdir()
        for name in WORKFLOW_FILES:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, self.repo / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, self.repo / name)
        self.tiny = yaml.safe_load((REPO / "tests" / "config" / "tiny.yaml").read_text())
        self.results = self.workdir / "results" / self.tiny["run"]

    def config_file(self, name: str = "tiny.yaml", **changes) -> Path:
        """The tiny config with ``section__key=value`` changes, written beside the run."""
        config = yaml.safe_load(yaml.safe_dump(self.tiny, sort_keys=False))
        for dotted, value in changes.items():
            *parents, key = dotted.split("__")
            node = config
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = value
        path = self.workdir.parent / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def run(self, *args: str, config: Path | None = None, profile: str = "local", check: bool = True):
        command = [
            SNAKEMAKE, "-s", str(self.repo / "Snakefile"), "-d", str(self.workdir),
            "--configfile", str(config or self.config_file()), "--cores", "2",
            "--profile", str(self.repo / "profiles" / profile), *args,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if check and done.returncode != 0:
            raise AssertionError(f"snakemake failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        return done

    def planned(self, *args: str, config: Path | None = None) -> list[tuple[str, dict[str, str]]]:
        """(rule, wildcards) of every job a dry run would execute."""
        done = self.run("--dry-run", *args, config=config)
        text = done.stdout + done.stderr
        if "Nothing to be done" in text:
            return []
        jobs = []
        for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n?)*)", text, re.MULTILINE):
            wildcards = re.search(r"^    wildcards: (.*)$", match.group(2), re.MULTILINE)
            pairs = wildcards.group(1).split(", ") if wildcards else []
            jobs.append((match.group(1), dict(pair.split("=", 1) for pair in pairs)))
        assert jobs, f"could not read the dry run:\n{text[-3000:]}"
        return jobs


def rules_of(jobs) -> Counter:
    return Counter(rule for rule, _ in jobs)


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Workflow:
    flow = Workflow(tmp_path_factory.mktemp("workflow"))
    flow.run()
    return flow


def test_runs_end_to_end_and_then_has_nothing_to_do(workflow):
    neurons = workflow.results / "neurons" / "neurons.parquet"
    assert neurons.exists() and (workflow.results / "model" / "config.json").exists()
    import pandas as pd

    table = pd.read_parquet(neurons)
    assert set(table["language"]) == set(workflow.tiny["languages"])
    assert list(table.columns[:5]) == ["language", "set_kind", "layer", "site", "index"]
    for language in workflow.tiny["languages"]:
        assert len(list((workflow.results / "scores" / language).glob("shard*-of-2.safetensors"))) == 2
    assert list((workflow.workdir / "logs").rglob("*.log")), "every rule writes a log"
    assert workflow.planned() == []


def test_reordering_config_keys_reruns_nothing(workflow):
    reordered = yaml.safe_load(workflow.config_file().read_text())
    reordered = {key: reordered[key] for key in reversed(list(reordered))}
    reordered["model"]["demo_settings"] = dict(reversed(list(reordered["model"]["demo_settings"].items())))
    path = workflow.workdir.parent / "reordered.yaml"
    path.write_text(yaml.safe_dump(reordered, sort_keys=False))
    assert workflow.planned(config=path) == []


def test_changing_rho_reruns_only_the_set_step(workflow):
    jobs = workflow.planned(config=workflow.config_file("rho.yaml", selection__rho=0.8))
    assert rules_of(jobs) == Counter({"neuron_sets": 1, "all": 1})


def test_changing_top_k_reruns_counts_and_sets_never_scoring(workflow):
    top_k = {"ffn": 0.1, "attn_q": 0.25, "attn_k": 0.25, "attn_v": 0.25}
    jobs = workflow.planned(config=workflow.config_file("topk.yaml", selection__top_k=top_k))
    assert rules_of(jobs) == Counter({"count_activations": 3, "neuron_sets": 1, "all": 1})


def test_adding_a_language_schedules_only_that_language(workflow):
    languages = workflow.tiny["languages"] + ["de"]
    jobs = workflow.planned(config=workflow.config_file("more.yaml", languages=languages))
    per_language = {wildcards.get("language") for _, wildcards in jobs} - {None}
    assert per_language == {"de"}
    assert rules_of(jobs) == Counter({"score_shard": 2, "count_activations": 1, "neuron_sets": 1, "all": 1})


def test_rerunning_one_language(workflow):
    shards = sorted(str(p.relative_to(workflow.workdir)) for p in (workflow.results / "scores" / "fr").glob("*"))
    jobs = workflow.planned("--forcerun", *shards)
    assert {wildcards.get("language") for _, wildcards in jobs} - {None} == {"fr"}
    assert rules_of(jobs) == Counter({"score_shard": 2, "count_activations": 1, "neuron_sets": 1, "all": 1})


def test_touching_or_copying_a_cached_tensor_invalidates_nothing(workflow):
    shard = workflow.results / "scores" / "en" / "shard0-of-2.safetensors"
    shard.touch()
    assert workflow.planned() == []
    copy = shard.with_suffix(".copy")
    shutil.copy(shard, copy)
    copy.replace(shard)
    assert workflow.planned() == []


def test_editing_a_library_module_reruns_the_steps_that_use_it(workflow):
    module = workflow.repo / "langneurons" / "selection.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# an edit\n")
        jobs = workflow.planned()
    finally:
        module.write_text(original)
    assert rules_of(jobs) == Counter({"count_activations": 3, "neuron_sets": 1, "all": 1})


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(selection__rhoo=0.5), "Additional properties are not allowed \\('rhoo' was unexpected\\)"),
        (dict(scoring__shards="two"), "'two' is not of type 'integer'"),
        (dict(languages=["en", "xx"]), r"languages: \['xx'\] not available from corpus source 'demo'"),
        (dict(scoring__sites=["ffn", "mlp"]), "'mlp' is not one of"),
    ],
)
def test_invalid_config_fails_at_parse_time(workflow, changes, message):
    done = workflow.run("--dry-run", config=workflow.config_file("bad.yaml", **changes), check=False)
    assert done.returncode != 0
    assert re.search(message, done.stdout + done.stderr), (done.stdout + done.stderr)[-3000:]
