# The built-in demo model: a small multilingual Llama trained from scratch on the corpus's
# `train` split (never on detect/finetune/eval documents), saved like a hub model.


rule train_demo_model:
    input:
        corpora=expand(f"{RESULTS}/corpus/{{language}}.parquet", language=config["model"]["demo_languages"]),
        code=library_of("train_demo_model.py"),
    output:
        model=directory(f"{RESULTS}/model"),
    params:
        settings=canonical(config["model"]["demo_settings"]),
    threads: cpus("demo_model")
    resources:
        **job_resources("demo_model"),
    log:
        f"{LOGS}/train_demo_model.log",
    benchmark:
        f"{BENCHMARKS}/train_demo_model.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/train_demo_model.py"
