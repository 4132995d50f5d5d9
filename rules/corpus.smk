# Corpus sampling: one Parquet file (with a JSON manifest) per language.


localrules:
    sample_corpus,


rule sample_corpus:
    input:
        code=library("corpora.py", "io.py", "steps/corpus.py"),
    output:
        corpus=f"{RESULTS}/corpus/{{language}}.parquet",
        manifest=f"{RESULTS}/corpus/{{language}}.manifest.json",
    params:
        source=canonical(config["corpus"]["source"]),
        split_sizes=canonical(config["corpus"]["split_sizes"]),
        filters=canonical(config["corpus"]["filters"]),
        seed=config["seed"],
    log:
        f"{LOGS}/corpus/{{language}}.log",
    script:
        "../workflow_scripts/sample_corpus.py"
