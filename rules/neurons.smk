# From scores to neuron sets: per-language activation counts (top-k per document), then the
# activated / specific / exclusive sets of all languages at consensus rho, and LAPE's sets.
# Stability compares the sets found on disjoint halves and on subsamples of the documents.


localrules:
    count_activations,
    neuron_sets,
    stability,


rule count_activations:
    input:
        shards=expand(
            f"{RESULTS}/scores/{{{{language}}}}/shard{{shard}}-of-{SHARDS}.safetensors", shard=range(SHARDS)
        ),
        code=library("selection.py", "io.py", "steps/neurons.py", "steps/scoring.py"),
    output:
        f"{RESULTS}/counts/{{language}}.safetensors",
    params:
        top_k=canonical(config["selection"]["top_k"]),
    log:
        f"{LOGS}/counts/{{language}}.log",
    script:
        "../workflow_scripts/count_activations.py"


rule neuron_sets:
    input:
        counts=expand(f"{RESULTS}/counts/{{language}}.safetensors", language=LANGUAGES),
        code=library("selection.py", "interventions.py", "io.py", "steps/neurons.py"),
    output:
        neurons=f"{RESULTS}/neurons/neurons.parquet",
        summary=f"{RESULTS}/neurons/summary.parquet",
        overlap=f"{RESULTS}/neurons/overlap.parquet",
        agreement=f"{RESULTS}/neurons/detector_agreement.parquet",
        record=f"{RESULTS}/neurons/record.json",
    params:
        languages=LANGUAGES,
        rho=config["selection"]["rho"],
        set_kinds=config["selection"]["set_kinds"],
        lape=canonical(config["selection"]["lape"]) if "lape" in DETECTORS else None,
        stages=canonical(config["stages"]),
    log:
        f"{LOGS}/neurons.log",
    script:
        "../workflow_scripts/neuron_sets.py"


def score_shards_by_language(wildcards):
    """Named inputs ``scores_<language>``: each language's score shards."""
    return {
        f"scores_{language}": expand(
            f"{RESULTS}/scores/{language}/shard{{shard}}-of-{SHARDS}.safetensors", shard=range(SHARDS)
        )
        for language in LANGUAGES
    }


rule stability:
    input:
        unpack(score_shards_by_language),
        code=library("selection.py", "io.py", "steps/neurons.py", "steps/scoring.py"),
    output:
        table=f"{RESULTS}/neurons/stability.parquet",
        record=f"{RESULTS}/neurons/stability.json",
    params:
        languages=LANGUAGES,
        top_k=canonical(config["selection"]["top_k"]),
        rho=config["selection"]["rho"],
        settings=canonical(config["selection"]["stability"]),
        seed=config["seed"],
    log:
        f"{LOGS}/neurons/stability.log",
    script:
        "../workflow_scripts/stability.py"
