# The ablation grid (MWork): every cell deactivates one language's neuron set, or a random
# control of the same size per (layer, site), in one condition, and evaluates every language.
# One job per target and control (real, random<seed>) loads the model once and evaluates all of
# that set's cells (every condition, detector and set kind), deactivating each cell's neurons
# through hooks; it writes one table per cell, so a cluster runs the groups in parallel and a new
# control seed or target runs only its own groups. The baseline cell deactivates nothing and is
# its own job. The evaluation batch size comes from execution.evaluation at job time.


localrules:
    ablation_grid,


rule ablation_baseline:
    input:
        corpora=expand(f"{RESULTS}/corpus/{{language}}.parquet", language=LANGUAGES),
        # the baseline deactivates nothing, so it does not wait for (or rerun with) the sets
        neurons=[],
        model=model_dir(),
        model_fingerprint=model_fingerprint(),
        data=evaluation_inputs(),
        code=library_of("ablation_cells.py"),
    output:
        cells=[f"{ABLATION_BASELINE}.parquet"],
        per_item=[f"{ABLATION_BASELINE}.items.parquet"],
        records=[f"{ABLATION_BASELINE}.json"],
    params:
        languages=LANGUAGES,
        model=model_params(),
        cells=[{"condition": "none", "detector": "none", "set_kind": "none", "target_language": "none",
                "control_seed": None}],
        stages=canonical(config["stages"]),
        settings=evaluation_params(),
        seed=config["seed"],
    threads: cpus("ablation")
    resources:
        **job_resources("ablation"),
    log:
        f"{LOGS}/ablation/baseline.log",
    benchmark:
        f"{BENCHMARKS}/ablation/baseline.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/ablation_cells.py"


if ablation_group_cells():

    rule ablation_group:
        input:
            corpora=expand(f"{RESULTS}/corpus/{{language}}.parquet", language=LANGUAGES),
            neurons=[f"{RESULTS}/neurons/neurons.parquet"],
            model=model_dir(),
            model_fingerprint=model_fingerprint(),
            data=evaluation_inputs(),
            code=library_of("ablation_cells.py"),
        output:
            cells=ablation_group_outputs("parquet"),
            per_item=ablation_group_outputs("items.parquet"),
            records=ablation_group_outputs("json"),
        wildcard_constraints:
            target=LANGUAGE_RE,
            control=CONTROL_RE,
        params:
            languages=LANGUAGES,
            model=model_params(),
            cells=lambda w: [
                {"condition": condition, "detector": detector, "set_kind": set_kind, "target_language": w.target,
                 "control_seed": None if w.control == "real" else int(w.control.removeprefix("random"))}
                for condition, detector, set_kind in ablation_group_cells()
            ],
            stages=canonical(config["stages"]),
            settings=evaluation_params(),
            seed=config["seed"],
        threads: cpus("ablation")
        resources:
            **job_resources("ablation"),
        log:
            f"{LOGS}/ablation/{{target}}-{{control}}.log",
        benchmark:
            f"{BENCHMARKS}/ablation/{{target}}-{{control}}.tsv"
        conda:
            ENV
        script:
            "../workflow_scripts/ablation_cells.py"


rule ablation_grid:
    input:
        cells=ablation_cells("parquet"),
        per_item=ablation_cells("items.parquet"),
        code=library_of("ablation_grid.py"),
    output:
        f"{RESULTS}/ablation/grid.parquet",
    params:
        uncertainty=canonical(config["uncertainty"]),
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/ablation/grid.log",
    conda:
        ENV
    script:
        "../workflow_scripts/ablation_grid.py"
