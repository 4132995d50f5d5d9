# PLND scoring: per language, `scoring.shards` jobs, each scoring a disjoint share of the
# detection documents. Raw per-document scores are cached, so that top-k and rho can change
# without rescoring. With the LAPE detector on, the same forward pass also counts, per FFN unit,
# the tokens on which it fires. Batch size and chunking come from execution.scoring at job time.


rule score_shard:
    input:
        corpus=f"{RESULTS}/corpus/{{language}}.parquet",
        model=model_dir(),
        model_fingerprint=model_fingerprint(),
        code=library_of("score_shard.py"),
    output:
        f"{RESULTS}/scores/{{language}}/shard{{shard}}-of-{SHARDS}.safetensors",
    wildcard_constraints:
        language=LANGUAGE_RE,
        shard=SHARD_RE,
    params:
        model=model_params(),
        scoring=scoring_settings(),
        shards=SHARDS,
    threads: cpus("scoring")
    resources:
        **job_resources("scoring"),
    log:
        f"{LOGS}/scores/{{language}}-shard{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/scores/{{language}}-shard{{shard}}.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/score_shard.py"
