# PLND scoring: per language, `scoring.shards` jobs, each scoring a disjoint share of the
# detection documents. Raw per-document scores are cached, so that top-k and rho can change
# without rescoring. With the LAPE detector on, the same forward pass also counts, per FFN unit,
# the tokens on which it fires.
DETECTORS = config["selection"]["detectors"]


def scoring_settings():
    """config["scoring"], with LAPE's per-unit token counts among the sites when LAPE is on."""
    settings = dict(config["scoring"])
    if "lape" in DETECTORS:
        settings["sites"] = [*settings["sites"], "ffn_active", "n_tokens"]
    return canonical(settings)


rule score_shard:
    input:
        corpus=f"{RESULTS}/corpus/{{language}}.parquet",
        model=model_dir(),
        code=library(
            "scoring.py", "batching.py", "architectures.py", "corpora.py", "io.py", "steps/scoring.py", "steps/common.py"
        ),
    output:
        f"{RESULTS}/scores/{{language}}/shard{{shard}}-of-{SHARDS}.safetensors",
    params:
        model=canonical(config["model"]),
        scoring=scoring_settings(),
        shards=SHARDS,
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    log:
        f"{LOGS}/scores/{{language}}-shard{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/scores/{{language}}-shard{{shard}}.tsv"
    script:
        "../workflow_scripts/score_shard.py"
