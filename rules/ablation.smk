# The ablation grid (MWork): every cell deactivates one language's neuron set, or a random
# control of the same size per (layer, site), in one condition, and evaluates every language.
# Cells are separate jobs, so a cluster runs them in parallel and a new condition reruns only
# its own cells. The baseline cell deactivates nothing.

ABLATION = config["ablation"]
ABLATION_TARGETS = ABLATION["targets"] or LANGUAGES
ABLATION_CONTROLS = ["real"] + [f"random{seed}" for seed in ABLATION["control_seeds"]]


wildcard_constraints:
    condition=r"none|understanding|task_attention|task_ffn|generation|all",
    detector=r"none|plnd|lape",
    set_kind=r"none|activated|specific|exclusive|lape",
    control=r"real|random\d+",


def detector_set_kinds(detector, condition):
    """The set kinds a detector's cells deactivate; LAPE's sets are FFN-only, so none in task_attention."""
    if detector == "lape":
        return [] if condition == "task_attention" else ["lape"]
    return ABLATION["set_kinds"]


def ablation_cells():
    cells = [f"{RESULTS}/ablation/cells/none/none/none/none/real.parquet"]
    for condition in ABLATION["conditions"]:
        for detector in ABLATION["detectors"]:
            for set_kind in detector_set_kinds(detector, condition):
                for target in ABLATION_TARGETS:
                    for control in ABLATION_CONTROLS:
                        cells.append(
                            f"{RESULTS}/ablation/cells/{condition}/{detector}/{set_kind}/{target}/{control}.parquet"
                        )
    return cells


rule ablation_cell:
    input:
        corpora=expand(f"{RESULTS}/corpus/{{language}}.parquet", language=LANGUAGES),
        # the baseline deactivates nothing, so it does not wait for (or rerun with) the sets
        neurons=lambda w: [] if w.condition == "none" else [f"{RESULTS}/neurons/neurons.parquet"],
        model=model_dir(),
        code=library(
            "evaluation", "batching.py", "interventions.py", "selection.py", "architectures.py", "corpora.py", "io.py",
            "steps/ablation.py", "steps/common.py",
        ),
    output:
        cell=f"{RESULTS}/ablation/cells/{{condition}}/{{detector}}/{{set_kind}}/{{target}}/{{control}}.parquet",
        record=f"{RESULTS}/ablation/cells/{{condition}}/{{detector}}/{{set_kind}}/{{target}}/{{control}}.json",
    params:
        languages=LANGUAGES,
        model=canonical(config["model"]),
        stages=canonical(config["stages"]),
        settings=canonical(config["evaluation"]),
        seed=config["seed"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    log:
        f"{LOGS}/ablation/{{condition}}-{{detector}}-{{set_kind}}-{{target}}-{{control}}.log",
    benchmark:
        f"{BENCHMARKS}/ablation/{{condition}}-{{detector}}-{{set_kind}}-{{target}}-{{control}}.tsv"
    script:
        "../workflow_scripts/ablation_cell.py"


localrules:
    ablation_grid,


rule ablation_grid:
    input:
        cells=ablation_cells(),
        code=library("io.py", "steps/ablation.py"),
    output:
        f"{RESULTS}/ablation/grid.parquet",
    log:
        f"{LOGS}/ablation/grid.log",
    script:
        "../workflow_scripts/ablation_grid.py"
