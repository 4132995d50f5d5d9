# The ablation grid (MWork): every cell deactivates one language's neuron set, or a random
# control of the same size per (layer, site), in one condition, and evaluates every language.
# Cells are separate jobs, so a cluster runs them in parallel and a new condition reruns only
# its own cells. The baseline cell deactivates nothing. The evaluation batch size comes from
# execution.evaluation at job time.


localrules:
    ablation_grid,


rule ablation_cell:
    input:
        corpora=expand(f"{RESULTS}/corpus/{{language}}.parquet", language=LANGUAGES),
        # the baseline deactivates nothing, so it does not wait for (or rerun with) the sets
        neurons=lambda w: [] if w.condition == "none" else [f"{RESULTS}/neurons/neurons.parquet"],
        model=model_dir(),
        code=library_of("ablation_cell.py"),
    output:
        cell=f"{RESULTS}/ablation/cells/{{condition}}/{{detector}}/{{set_kind}}/{{target}}/{{control}}.parquet",
        record=f"{RESULTS}/ablation/cells/{{condition}}/{{detector}}/{{set_kind}}/{{target}}/{{control}}.json",
        # per document (item) of every metric: paired bootstrap intervals of the ratios to the baseline
        per_item=f"{RESULTS}/ablation/cells/{{condition}}/{{detector}}/{{set_kind}}/{{target}}/{{control}}.items.parquet",
    wildcard_constraints:
        condition=ABLATION_CONDITION_RE,
        detector=DETECTOR_RE,
        set_kind=ABLATION_SET_KIND_RE,
        target=f"none|{LANGUAGE_RE}",
        control=CONTROL_RE,
    params:
        languages=LANGUAGES,
        model=model_params(),
        stages=canonical(config["stages"]),
        settings=canonical(config["evaluation"]),
        seed=config["seed"],
    threads: cpus("ablation")
    resources:
        **job_resources("ablation"),
    log:
        f"{LOGS}/ablation/{{condition}}-{{detector}}-{{set_kind}}-{{target}}-{{control}}.log",
    benchmark:
        f"{BENCHMARKS}/ablation/{{condition}}-{{detector}}-{{set_kind}}-{{target}}-{{control}}.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/ablation_cell.py"


rule ablation_grid:
    input:
        cells=ablation_cells(),
        code=library_of("ablation_grid.py"),
    output:
        f"{RESULTS}/ablation/grid.parquet",
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/ablation/grid.log",
    conda:
        ENV
    script:
        "../workflow_scripts/ablation_grid.py"
