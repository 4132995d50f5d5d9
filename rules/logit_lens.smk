# Logit lens (MWork evidence a): decode every layer's hidden state with the unembedding and count
# how many of the top-k tokens are English, the document's language, or neither. Which token
# belongs to which language comes from token statistics of the sampled corpora (token_languages);
# the ratio is measured on each language's `eval` documents, as is and with that language's
# neurons of one set kind deactivated (condition `<set_kind>_deactivated`). The batch size comes
# from execution.logit_lens at job time. Retuning the token attribution reruns the lens through
# the token table, not through its params.


localrules:
    token_languages,
    logit_lens_table,


rule token_languages:
    input:
        corpora=expand(f"{RESULTS}/corpus/{{language}}.parquet", language=TOKEN_LANGUAGES),
        model=model_dir(),
        model_fingerprint=model_fingerprint(),
        code=library_of("token_languages.py"),
    output:
        f"{RESULTS}/logit_lens/token_languages.safetensors",
    params:
        languages=TOKEN_LANGUAGES,
        tokenizer=canonical({key: MODEL[key] for key in ("demo", "id", "revision", "gguf_file", "gguf_package")}),
        splits=LENS["token_splits"],
        token_ratio=LENS["token_ratio"],
        min_count=LENS["min_count"],
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/logit_lens/token_languages.log",
    conda:
        ENV
    script:
        "../workflow_scripts/token_languages.py"


rule logit_lens:
    input:
        corpus=f"{RESULTS}/corpus/{{language}}.parquet",
        tokens=rules.token_languages.output[0],
        neurons=lambda wildcards: [] if wildcards.condition == "none" else [f"{RESULTS}/neurons/neurons.parquet"],
        model=model_dir(),
        model_fingerprint=model_fingerprint(),
        code=library_of("logit_lens.py"),
    output:
        f"{RESULTS}/logit_lens/{{condition}}/{{language}}.parquet",
    wildcard_constraints:
        condition="|".join(LENS_CONDITIONS),
        language=LANGUAGE_RE,
    params:
        model=model_params(),
        # only the settings that change the decoding
        settings=canonical(
            {key: LENS[key] for key in ("top_k", "final_norm", "max_length", "n_docs", "skip_first_tokens")}
        ),
        set_kind=lambda wildcards: None if wildcards.condition == "none" else LENS_DEACTIVATE,
    threads: cpus("logit_lens")
    resources:
        **job_resources("logit_lens"),
    log:
        f"{LOGS}/logit_lens/{{condition}}/{{language}}.log",
    benchmark:
        f"{BENCHMARKS}/logit_lens/{{condition}}/{{language}}.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/logit_lens.py"


rule logit_lens_table:
    input:
        tables=expand(
            f"{RESULTS}/logit_lens/{{condition}}/{{language}}.parquet", condition=LENS_CONDITIONS, language=LANGUAGES
        ),
        code=library_of("logit_lens_table.py"),
    output:
        f"{RESULTS}/logit_lens/all.parquet",
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/logit_lens/all.log",
    conda:
        ENV
    script:
        "../workflow_scripts/logit_lens_table.py"
