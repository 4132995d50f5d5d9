# Names and helpers shared by the rule files. Every name a rule file uses is defined here, so that
# no rule file reads another's globals and the include order of the rule files does not matter;
# the rule files hold rules only.
import os
from collections import defaultdict
from pathlib import Path

from langneurons.conditions import CONDITIONS, deactivated_condition, token_language_names
from langneurons import eval_sources
from langneurons.config import parse_top_k_label, site_top_k, top_k_label
from langneurons.imports import library_files
from langneurons.models import cached_model_fingerprint, gguf_source, local_model_source, package_version

WORKFLOW_DIR = Path(workflow.basedir)
LIBRARY = WORKFLOW_DIR / "langneurons"
SCRIPTS = WORKFLOW_DIR / "workflow_scripts"
REPORT_DIR = WORKFLOW_DIR / "report"
# Every rule runs Python in this environment under --sdm conda (the path is relative to rules/).
ENV = "../envs/langneurons.yaml"

RESULTS = f"results/{config['run']}"
LOGS = f"logs/{config['run']}"
BENCHMARKS = f"benchmarks/{config['run']}"
FIGURES = f"{RESULTS}/figures"
LANGUAGES = list(config["languages"])
SHARDS = config["scoring"]["shards"]
DETECTORS = config["selection"]["detectors"]
METRICS = config["evaluation"]["metrics"]

# Wildcard patterns, each given to the rules whose wildcard means that thing.
LANGUAGE_RE = r"[a-z]{2,3}(_[A-Za-z]+)?"
SHARD_RE = r"\d+"
ABLATION_CONDITION_RE = "none|" + "|".join(CONDITIONS)
DETECTOR_RE = r"none|plnd|lape"
ABLATION_SET_KIND_RE = r"none|activated|specific|exclusive|lape"
CONTROL_RE = r"real|random\d+"
FINETUNE_METHOD_RE = r"targeted|random|full|lora|none"
METRIC_RE = "|".join(METRICS)

# Logit lens: the condition decoded with each language's neurons of one set kind deactivated, and
# the languages the token table labels (English always: the ratio compares every language with it).
LENS = config["logit_lens"]
LENS_DEACTIVATE = LENS["deactivate"]
LENS_CONDITIONS = deactivated_condition(LENS_DEACTIVATE)
TOKEN_LANGUAGES = token_language_names(LANGUAGES)

ABLATION = config["ablation"]
ABLATION_TARGETS = ABLATION["targets"] or LANGUAGES
ABLATION_CONTROLS = ["real"] + [f"random{seed}" for seed in ABLATION["control_seeds"]]
FINETUNE = config["finetune"]


def canonical(value):
    """A config value with its mapping keys sorted, so that reordering YAML keys reruns nothing."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def library_of(script):
    """The library files ``workflow_scripts/<script>`` runs (its modules, read from its imports, and the C
    sources they compile): as inputs, so that editing one reruns the jobs that run it."""
    return [str(path) for path in library_files(SCRIPTS / script, LIBRARY)]


# ---- the analysed model ---------------------------------------------------------------------------

MODEL = config["model"]
# a configured GGUF, converted once into CONVERTED_MODEL (None for the demo model and plain models)
GGUF = None if MODEL["demo"] else gguf_source(MODEL)
CONVERTED_MODEL = f"{RESULTS}/converted_model"
# the local folder or GGUF file the model is read from (None: trained here, or pinned by a revision or a package
# version), its content fingerprint's record, and that fingerprint now (planning stats the files, and hashes only
# those whose stat changed since the cache was written)
LOCAL_MODEL = local_model_source(MODEL)
MODEL_FINGERPRINT = f"{RESULTS}/model_fingerprint.json"
LOCAL_MODEL_SHA256 = (
    cached_model_fingerprint(LOCAL_MODEL, f"{RESULTS}/model_fingerprint.stat-cache.json")["sha256"]
    if LOCAL_MODEL is not None
    else None
)


def model_dir():
    """The model folder the workflow makes and the model jobs load: the trained demo model, or the configured GGUF
    converted once; nothing when the jobs load model.id itself (a hub id or a local folder)."""
    if MODEL["demo"]:
        return [f"{RESULTS}/model"]
    return [CONVERTED_MODEL] if GGUF is not None else []


def model_fingerprint():
    """The fingerprint record of a local model folder that the model jobs load, as their input: a new one (a
    changed model) reruns them. A local GGUF's record is an input of prepare_model instead."""
    return [MODEL_FINGERPRINT] if LOCAL_MODEL is not None and GGUF is None else []


def gguf_fingerprint():
    """The fingerprint record of a local GGUF file, as prepare_model's input."""
    return [MODEL_FINGERPRINT] if LOCAL_MODEL is not None and GGUF is not None else []


def gguf_params():
    """What identifies the configured GGUF, and the version of the package that ships it (a new version
    reconverts; its assemble() checks the file against the version's checksums)."""
    keys = {key: MODEL[key] for key in ("id", "revision", "gguf_file", "gguf_package")}
    if GGUF is not None and GGUF.kind == "package":
        keys["gguf_package_version"] = package_version(GGUF.where)
    return canonical(keys)


def model_params():
    """What identifies the analysed model (its placement, execution.device_map, is not a parameter)."""
    return canonical(MODEL)


# ---- resources: read from config["resources"]; never job parameters ------------------------------


def cpus(group):
    return config["resources"][group]["cpus"]


def job_resources(group, **overrides):
    """A group's resources as Snakemake (and the SLURM plugin) name them: mem_mb, runtime (minutes), and gpu
    if it asks for any; ``overrides`` replace some (e.g. a memory derived from the inputs)."""
    settings = config["resources"][group]
    resources = {"mem_mb": settings["mem_mb"], "runtime": settings["runtime"]}
    if settings["gpus"]:
        resources["gpu"] = settings["gpus"]
    return {**resources, **overrides}


def score_memory_mb(wildcards, input):
    """resources.sets.mem_mb plus three times the largest language's score files: counting and stability read
    one language's scores at a time, and one site of them at once (a site's scores, the shard being copied in,
    the top-k indices and the mask stay below three times the files)."""
    per_language = defaultdict(int)
    for path in input:
        if f"{RESULTS}/scores/" in path:
            per_language[Path(path).parent.name] += os.path.getsize(path)
    largest = max(per_language.values(), default=0)
    return config["resources"]["sets"]["mem_mb"] + -(-3 * largest // 2**20)


# ---- the grids ----------------------------------------------------------------------------------


def ablation_grid_on():
    return bool(ABLATION["conditions"])


def finetune_grid_on():
    return bool(FINETUNE["methods"]) and FINETUNE["targets"] != []


def detector_set_kinds(detector, condition):
    """The set kinds a detector's cells deactivate; LAPE's sets are FFN-only, so none in task_attention."""
    if detector == "lape":
        return [] if condition == "task_attention" else ["lape"]
    return ABLATION["set_kinds"]


def ablation_group_cells():
    """(condition, detector, set_kind) of every cell that deactivates a target's set (or its random control):
    one job per target and control evaluates them all on one loaded model."""
    return [
        (condition, detector, set_kind)
        for condition in ABLATION["conditions"]
        for detector in ABLATION["detectors"]
        for set_kind in detector_set_kinds(detector, condition)
    ]


ABLATION_BASELINE = f"{RESULTS}/ablation/cells/none/none/none/none/real"


def ablation_group_outputs(suffix):
    """The per-cell files of one group job, with the wildcards {target} and {control}."""
    return [
        f"{RESULTS}/ablation/cells/{condition}/{detector}/{set_kind}/{{target}}/{{control}}.{suffix}"
        for condition, detector, set_kind in ablation_group_cells()
    ]


def ablation_cells(suffix="parquet"):
    """Every cell's file: the baseline and each group's cells for each target and control."""
    groups = [
        path.format(target=target, control=control)
        for target in ABLATION_TARGETS
        for control in ABLATION_CONTROLS
        for path in ablation_group_outputs(suffix)
    ]
    return [f"{ABLATION_BASELINE}.{suffix}", *groups]


def evaluation_params():
    """config["evaluation"] as the evaluating jobs' parameter: the settings of the metrics it uses only, so that
    configuring an unused benchmark reruns nothing."""
    settings = dict(config["evaluation"])
    settings["benchmarks"] = {name: settings["benchmarks"][name] for name in METRICS if name in eval_sources.BENCHMARKS}
    if "fidelity" not in METRICS:
        settings.pop("fidelity")
    return canonical(settings)


def evaluation_inputs():
    """The local benchmark files the evaluating jobs read, so that editing one reruns them."""
    files = []
    for name in METRICS:
        bench = config["evaluation"]["benchmarks"].get(name) if name in eval_sources.BENCHMARKS else None
        if bench is None or bench["source"] is None:
            continue
        wanted = bench["languages"] if bench["languages"] is not None else LANGUAGES
        for language in eval_sources.benchmark_languages(name, bench["source"], bench["split"], wanted):
            files.append(str(eval_sources.local_benchmark_file(name, language, bench["source"], bench["split"])))
    return sorted(set(files))


def finetune_tables(suffix="parquet"):
    return expand(
        f"{RESULTS}/finetune/{{target}}/{{method}}.{suffix}",
        target=FINETUNE["targets"] or LANGUAGES,
        method=FINETUNE["methods"],
    )


# ---- scoring and sets ---------------------------------------------------------------------------


def scoring_settings():
    """config["scoring"], with LAPE's per-unit token counts among the sites when LAPE is on."""
    settings = dict(config["scoring"])
    if "lape" in DETECTORS:
        settings["sites"] = [*settings["sites"], "ffn_active", "n_tokens"]
    return canonical(settings)


def score_shards(language):
    """A language's score shards; ``language`` may be the wildcard, written ``"{{language}}"``."""
    return expand(f"{RESULTS}/scores/{language}/shard{{shard}}-of-{SHARDS}.safetensors", shard=range(SHARDS))


def score_shards_by_language(wildcards):
    """Named inputs ``scores_<language>``: each language's score shards."""
    return {f"scores_{language}": score_shards(language) for language in LANGUAGES}


# ---- figures and the report ---------------------------------------------------------------------


def figure_report(path, caption, category, subcategory):
    """``path`` as a report item of ``category``/``subcategory``, captioned by ``report/<caption>.rst``."""
    return report(path, caption=str(REPORT_DIR / f"{caption}.rst"), category=category, subcategory=subcategory)


def figure_outputs():
    """Every figure this configuration draws (PNG and SVG)."""
    names = ["fig1_language_ratio", "fig2_neuron_counts", "fig3_overlap", "fig6_stability"]
    if LENS_DEACTIVATE:
        names.append("fig1b_language_ratio_deactivated")
    if "lape" in DETECTORS:
        names.append("fig3b_overlap_lape")
    if ablation_grid_on():
        names += [f"fig4_ablation_{metric}" for metric in METRICS]
    # figure 5 compares each method with "none" (the model before fine-tuning)
    if finetune_grid_on() and "none" in FINETUNE["methods"] and len(FINETUNE["methods"]) > 1:
        names += [f"fig5_finetune_{metric}" for metric in METRICS]
    return [f"{FIGURES}/{name}.{ext}" for name in names for ext in ("png", "svg")]


def final_outputs():
    outputs = [f"{RESULTS}/neurons/neurons.parquet", f"{RESULTS}/logit_lens/all.parquet", *figure_outputs()]
    if config["model"]["demo"]:
        outputs.append(f"{RESULTS}/model")
    if ablation_grid_on():
        outputs.append(f"{RESULTS}/ablation/grid.parquet")
    if finetune_grid_on():
        outputs.append(f"{RESULTS}/finetune/results.parquet")
    return outputs


# ---- the selectivity sweep ------------------------------------------------------------------------

SELECTIVITY = config["selectivity"]
SELECTIVITY_METHOD_RE = r"paper|released_code"
TOP_K_RE = r"[0-9]+(\.[0-9]+)?"
# the set kinds' exact spelling is checked by the schema (selectivity.set_kinds)
SWEEP_SET_KIND_RE = r"[a-z_]+(-[0-9.]+)?"


def selectivity_on():
    return bool(SELECTIVITY["methods"])


def selectivity_top_k(label):
    """A sweep top-k (its canonical name) as the per-site mapping the counting step takes."""
    return site_top_k(parse_top_k_label(label), config["scoring"]["sites"])


def sweep_score_shards(method, language):
    """A language's score shards for a scoring method: the main run's when it is scoring.method (no rescoring)."""
    if method == config["scoring"]["method"]:
        return score_shards(language)
    return expand(
        f"{RESULTS}/selectivity/scores/{method}/{language}/shard{{shard}}-of-{SHARDS}.safetensors", shard=range(SHARDS)
    )


def sweep_counts(method, label, language):
    """A language's activation counts for a method and top-k: the main run's when both are the configured ones."""
    sites = config["scoring"]["sites"]
    configured = {site: config["selection"]["top_k"][site] for site in sites}
    if method == config["scoring"]["method"] and selectivity_top_k(label) == configured:
        return f"{RESULTS}/counts/{language}.safetensors"
    return f"{RESULTS}/selectivity/counts/{method}/{label}/{language}.safetensors"


def selectivity_cells():
    return expand(
        f"{RESULTS}/selectivity/cells/{{method}}/{{top_k}}/{{set_kind}}.parquet",
        method=SELECTIVITY["methods"],
        top_k=[top_k_label(value) for value in SELECTIVITY["top_k"]],
        set_kind=SELECTIVITY["set_kinds"],
    )


def selectivity_outputs():
    if not selectivity_on():
        return []
    return [
        f"{RESULTS}/selectivity/table.parquet",
        *[f"{FIGURES}/selectivity_frontier.{ext}" for ext in ("png", "svg")],
    ]
