# Targeted fine-tuning (paper section 6.3): per target language and method, fine-tune a fresh
# copy of the model on the target's `finetune` documents and evaluate every language.
# Methods: targeted (the target's neurons only), random (a same-size random subset per layer
# and site), full, lora, none (the before-values). Each cell is its own job.

FINETUNE = config["finetune"]


wildcard_constraints:
    method=r"targeted|random|full|lora|none",


def finetune_tables():
    return expand(
        f"{RESULTS}/finetune/{{target}}/{{method}}.parquet",
        target=FINETUNE["targets"] or LANGUAGES,
        method=FINETUNE["methods"],
    )


rule finetune_cell:
    input:
        corpora=expand(f"{RESULTS}/corpus/{{language}}.parquet", language=LANGUAGES),
        # full fine-tuning and "none" use no neuron set, so they do not rerun when the sets change
        neurons=lambda w: [] if w.method in ("full", "none") else [f"{RESULTS}/neurons/neurons.parquet"],
        model=model_dir(),
        code=library(
            "finetuning.py", "batching.py", "evaluation", "selection.py", "architectures.py", "interventions.py",
            "corpora.py", "io.py", "steps/finetune.py", "steps/ablation.py", "steps/common.py",
        ),
    output:
        artefact=directory(f"{RESULTS}/finetune/{{target}}/{{method}}"),
        table=f"{RESULTS}/finetune/{{target}}/{{method}}.parquet",
    params:
        languages=LANGUAGES,
        model=canonical(config["model"]),
        set_kind=FINETUNE["set_kind"],
        control_seed=FINETUNE["control_seed"],
        training=canonical(FINETUNE["training"]),
        evaluation=canonical(config["evaluation"]),
        seed=config["seed"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    log:
        f"{LOGS}/finetune/{{target}}-{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/finetune/{{target}}-{{method}}.tsv"
    script:
        "../workflow_scripts/finetune_cell.py"


localrules:
    finetune_results,


rule finetune_results:
    input:
        tables=finetune_tables(),
        code=library("io.py", "steps/finetune.py"),
    output:
        f"{RESULTS}/finetune/results.parquet",
    log:
        f"{LOGS}/finetune/results.log",
    script:
        "../workflow_scripts/finetune_results.py"
