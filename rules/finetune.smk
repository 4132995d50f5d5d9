# Targeted fine-tuning (paper section 6.3): per target language and method, fine-tune a fresh
# copy of the model on the target's `finetune` documents and evaluate every language.
# Methods: targeted (the target's neurons only), random (a same-size random subset per layer
# and site), full, lora, none (the before-values). Each cell is its own job.


localrules:
    finetune_results,


rule finetune_cell:
    input:
        corpora=expand(f"{RESULTS}/corpus/{{language}}.parquet", language=LANGUAGES),
        # full fine-tuning and "none" use no neuron set, so they do not rerun when the sets change
        neurons=lambda w: [] if w.method in ("full", "none") else [f"{RESULTS}/neurons/neurons.parquet"],
        model=model_dir(),
        model_fingerprint=model_fingerprint(),
        data=evaluation_inputs(),
        code=library_of("finetune_cell.py"),
    output:
        artefact=directory(f"{RESULTS}/finetune/{{target}}/{{method}}"),
        table=f"{RESULTS}/finetune/{{target}}/{{method}}.parquet",
        per_item=f"{RESULTS}/finetune/{{target}}/{{method}}.items.parquet",
    wildcard_constraints:
        target=LANGUAGE_RE,
        method=FINETUNE_METHOD_RE,
    params:
        languages=LANGUAGES,
        model=model_params(),
        set_kind=FINETUNE["set_kind"],
        control_seed=FINETUNE["control_seed"],
        training=canonical(FINETUNE["training"]),
        evaluation=evaluation_params(),
        seed=config["seed"],
    threads: cpus("finetune")
    resources:
        **job_resources("finetune"),
    log:
        f"{LOGS}/finetune/{{target}}-{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/finetune/{{target}}-{{method}}.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/finetune_cell.py"


rule finetune_results:
    input:
        tables=finetune_tables(),
        per_item=finetune_tables("items.parquet"),
        code=library_of("finetune_results.py"),
    output:
        f"{RESULTS}/finetune/results.parquet",
    params:
        uncertainty=canonical(config["uncertainty"]),
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/finetune/results.log",
    conda:
        ENV
    script:
        "../workflow_scripts/finetune_results.py"
