# Corpus sampling: one Parquet file (with a JSON manifest) per language. A local rule: the hub
# streams of the presets need the network, which a cluster's login node has.


localrules:
    sample_corpus,


rule sample_corpus:
    input:
        code=library_of("sample_corpus.py"),
    output:
        corpus=f"{RESULTS}/corpus/{{language}}.parquet",
        manifest=f"{RESULTS}/corpus/{{language}}.manifest.json",
    wildcard_constraints:
        language=LANGUAGE_RE,
    params:
        source=canonical(config["corpus"]["source"]),
        split_sizes=canonical(config["corpus"]["split_sizes"]),
        filters=canonical(config["corpus"]["filters"]),
        seed=config["seed"],
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/corpus/{{language}}.log",
    conda:
        ENV
    script:
        "../workflow_scripts/sample_corpus.py"
