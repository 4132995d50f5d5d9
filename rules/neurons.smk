# From scores to neuron sets: per-language activation counts (top-k per document), then the
# activated / specific / exclusive sets of all languages at consensus rho, and LAPE's sets.
# Stability compares the sets found on disjoint halves and on subsamples of the documents.
# Counting and stability read the cached scores one language (and one site) at a time, as
# cluster jobs sized by the score files; the sets come from the small count files.


localrules:
    neuron_sets,


rule count_activations:
    input:
        shards=score_shards("{{language}}"),
        code=library_of("count_activations.py"),
    output:
        f"{RESULTS}/counts/{{language}}.safetensors",
    wildcard_constraints:
        language=LANGUAGE_RE,
    params:
        top_k=canonical(config["selection"]["top_k"]),
    threads: cpus("sets")
    resources:
        **job_resources("sets", mem_mb=score_memory_mb),
    log:
        f"{LOGS}/counts/{{language}}.log",
    conda:
        ENV
    script:
        "../workflow_scripts/count_activations.py"


rule neuron_sets:
    input:
        counts=expand(f"{RESULTS}/counts/{{language}}.safetensors", language=LANGUAGES),
        code=library_of("neuron_sets.py"),
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
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/neurons.log",
    conda:
        ENV
    script:
        "../workflow_scripts/neuron_sets.py"


rule stability:
    input:
        unpack(score_shards_by_language),
        code=library_of("stability.py"),
    output:
        table=f"{RESULTS}/neurons/stability.parquet",
        record=f"{RESULTS}/neurons/stability.json",
    params:
        languages=LANGUAGES,
        top_k=canonical(config["selection"]["top_k"]),
        rho=config["selection"]["rho"],
        settings=canonical(config["selection"]["stability"]),
        seed=config["seed"],
    threads: cpus("sets")
    resources:
        **job_resources("sets", mem_mb=score_memory_mb),
    log:
        f"{LOGS}/neurons/stability.log",
    conda:
        ENV
    script:
        "../workflow_scripts/stability.py"
