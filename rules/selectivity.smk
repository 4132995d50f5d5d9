# The selectivity sweep: which set rule (and top-k, and scoring method) gives sets whose deactivation hurts
# their own language and spares the others. Cached scores are reused: a top-k other than selection.top_k
# only counts again, and a method other than scoring.method scores again (into selectivity/scores). One job
# per (method, top-k, set kind) loads the model once and deactivates every target's set and its random
# controls in turn; the table summarises them with bootstrap intervals and names the best rules.


localrules:
    selectivity_table,
    figure_selectivity,


rule selectivity_score_shard:
    input:
        corpus=f"{RESULTS}/corpus/{{language}}.parquet",
        model=model_dir(),
        code=library_of("score_shard.py"),
    output:
        f"{RESULTS}/selectivity/scores/{{method}}/{{language}}/shard{{shard}}-of-{SHARDS}.safetensors",
    wildcard_constraints:
        method=SELECTIVITY_METHOD_RE,
        language=LANGUAGE_RE,
        shard=SHARD_RE,
    params:
        model=model_params(),
        # the sweep needs PLND scores only (no LAPE counts)
        scoring=lambda w: canonical({**config["scoring"], "method": w.method}),
        shards=SHARDS,
    threads: cpus("scoring")
    resources:
        **job_resources("scoring"),
    log:
        f"{LOGS}/selectivity/scores/{{method}}-{{language}}-shard{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/selectivity/scores/{{method}}-{{language}}-shard{{shard}}.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/score_shard.py"


rule selectivity_counts:
    input:
        shards=lambda w: sweep_score_shards(w.method, w.language),
        code=library_of("count_activations.py"),
    output:
        f"{RESULTS}/selectivity/counts/{{method}}/{{top_k}}/{{language}}.safetensors",
    wildcard_constraints:
        method=SELECTIVITY_METHOD_RE,
        top_k=TOP_K_RE,
        language=LANGUAGE_RE,
    params:
        top_k=lambda w: canonical(selectivity_top_k(w.top_k)),
    threads: cpus("sets")
    resources:
        **job_resources("sets", mem_mb=score_memory_mb),
    log:
        f"{LOGS}/selectivity/counts/{{method}}-{{top_k}}-{{language}}.log",
    conda:
        ENV
    script:
        "../workflow_scripts/count_activations.py"


rule selectivity_cell:
    input:
        corpora=expand(f"{RESULTS}/corpus/{{language}}.parquet", language=LANGUAGES),
        counts=lambda w: [sweep_counts(w.method, w.top_k, language) for language in LANGUAGES],
        model=model_dir(),
        code=library_of("selectivity_cell.py"),
    output:
        cell=f"{RESULTS}/selectivity/cells/{{method}}/{{top_k}}/{{set_kind}}.parquet",
        record=f"{RESULTS}/selectivity/cells/{{method}}/{{top_k}}/{{set_kind}}.json",
    wildcard_constraints:
        method=SELECTIVITY_METHOD_RE,
        top_k=TOP_K_RE,
        set_kind=SWEEP_SET_KIND_RE,
    params:
        languages=LANGUAGES,
        model=model_params(),
        rho=config["selection"]["rho"],
        targets=SELECTIVITY["targets"],
        control_seeds=SELECTIVITY["control_seeds"],
        evaluation={key: config["evaluation"][key] for key in ("n_docs", "max_length")},
    threads: cpus("ablation")
    resources:
        **job_resources("ablation"),
    log:
        f"{LOGS}/selectivity/cells/{{method}}-{{top_k}}-{{set_kind}}.log",
    benchmark:
        f"{BENCHMARKS}/selectivity/cells/{{method}}-{{top_k}}-{{set_kind}}.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/selectivity_cell.py"


rule selectivity_table:
    input:
        cells=selectivity_cells(),
        code=library_of("selectivity_table.py"),
    output:
        table=f"{RESULTS}/selectivity/table.parquet",
        best=f"{RESULTS}/selectivity/best.parquet",
    params:
        settings=canonical({key: SELECTIVITY[key] for key in ("n_resamples", "confidence", "goal")}),
        seed=config["seed"],
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/selectivity/table.log",
    conda:
        ENV
    script:
        "../workflow_scripts/selectivity_table.py"


rule figure_selectivity:
    input:
        table=f"{RESULTS}/selectivity/table.parquet",
        code=library_of("figure_selectivity.py"),
    output:
        png=figure_report(
            f"{FIGURES}/selectivity_frontier.png", "selectivity_frontier", "7. Selectivity", "set rules"
        ),
        svg=f"{FIGURES}/selectivity_frontier.svg",
    params:
        goal=canonical(SELECTIVITY["goal"]),
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/figures/selectivity_frontier.log",
    conda:
        ENV
    script:
        "../workflow_scripts/figure_selectivity.py"
