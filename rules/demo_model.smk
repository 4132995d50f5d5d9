# The built-in demo model: a small multilingual Llama trained from scratch on the corpus's
# `train` split (never on detect/finetune/eval documents), saved like a hub model.


rule train_demo_model:
    input:
        corpora=expand(f"{RESULTS}/corpus/{{language}}.parquet", language=config["model"]["demo_languages"]),
        code=library(
            "demo_model.py", "evaluation/scoring.py", "evaluation/common.py", "batching.py", "architectures.py",
            "corpora.py", "io.py", "steps/corpus.py",
        ),
    output:
        model=directory(f"{RESULTS}/model"),
    params:
        settings=canonical(config["model"]["demo_settings"]),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        f"{LOGS}/train_demo_model.log",
    benchmark:
        f"{BENCHMARKS}/train_demo_model.tsv"
    script:
        "../workflow_scripts/train_demo_model.py"
