# From scores to neuron sets: per-language activation counts (top-k per document), then the
# activated / specific / exclusive sets of all languages at consensus rho.


localrules:
    count_activations,
    neuron_sets,


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
        record=f"{RESULTS}/neurons/record.json",
    params:
        languages=LANGUAGES,
        rho=config["selection"]["rho"],
        set_kinds=config["selection"]["set_kinds"],
        stages=canonical(config["stages"]),
    log:
        f"{LOGS}/neurons.log",
    script:
        "../workflow_scripts/neuron_sets.py"
