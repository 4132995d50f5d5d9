# Logit lens (MWork evidence a): decode every layer's hidden state with the unembedding and count
# how many of the top-k tokens are English, the document's language, or neither. Which token
# belongs to which language comes from token statistics of the sampled corpora (token_languages);
# the ratio is measured on each language's `eval` documents, as is and with that language's
# neurons of one set kind deactivated (condition `<set_kind>_deactivated`).
from langneurons.steps.logit_lens import deactivated_condition, token_language_names

LOGIT_LENS = config["logit_lens"]
LENS_DEACTIVATE = LOGIT_LENS["deactivate"]
# (check_config has made sure that selection.set_kinds builds this set)
LENS_CONDITIONS = deactivated_condition(LENS_DEACTIVATE)
# English is always labelled: the ratio compares every language with it.
TOKEN_LANGUAGES = token_language_names(LANGUAGES)
# Only the settings that change the decoding: retuning the token attribution reruns the jobs
# through the token table, not through their params.
LENS_DECODING = canonical(
    {key: LOGIT_LENS[key] for key in ("top_k", "final_norm", "batch_size", "max_length", "n_docs", "skip_first_tokens")}
)


localrules:
    token_languages,
    logit_lens_table,


rule token_languages:
    input:
        corpora=expand(f"{RESULTS}/corpus/{{language}}.parquet", language=TOKEN_LANGUAGES),
        model=model_dir(),
        code=library("logit_lens.py", "batching.py", "corpora.py", "io.py", "steps/logit_lens.py", "steps/common.py"),
    output:
        f"{RESULTS}/logit_lens/token_languages.safetensors",
    params:
        languages=TOKEN_LANGUAGES,
        tokenizer=canonical({key: config["model"][key] for key in ("demo", "id", "revision")}),
        splits=LOGIT_LENS["token_splits"],
        token_ratio=LOGIT_LENS["token_ratio"],
        min_count=LOGIT_LENS["min_count"],
    log:
        f"{LOGS}/logit_lens/token_languages.log",
    script:
        "../workflow_scripts/token_languages.py"


rule logit_lens:
    input:
        corpus=f"{RESULTS}/corpus/{{language}}.parquet",
        tokens=rules.token_languages.output[0],
        neurons=lambda wildcards: [] if wildcards.condition == "none" else [f"{RESULTS}/neurons/neurons.parquet"],
        model=model_dir(),
        code=library(
            "logit_lens.py",
            "batching.py",
            "interventions.py",
            "architectures.py",
            "corpora.py",
            "io.py",
            "steps/logit_lens.py",
            "steps/common.py",
        ),
    output:
        f"{RESULTS}/logit_lens/{{condition}}/{{language}}.parquet",
    wildcard_constraints:
        condition="|".join(LENS_CONDITIONS),
    params:
        model=canonical(config["model"]),
        settings=LENS_DECODING,
        set_kind=lambda wildcards: None if wildcards.condition == "none" else LENS_DEACTIVATE,
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    log:
        f"{LOGS}/logit_lens/{{condition}}/{{language}}.log",
    benchmark:
        f"{BENCHMARKS}/logit_lens/{{condition}}/{{language}}.tsv"
    script:
        "../workflow_scripts/logit_lens.py"


rule logit_lens_table:
    input:
        tables=expand(
            f"{RESULTS}/logit_lens/{{condition}}/{{language}}.parquet", condition=LENS_CONDITIONS, language=LANGUAGES
        ),
        code=library("io.py", "steps/logit_lens.py"),
    output:
        f"{RESULTS}/logit_lens/all.parquet",
    log:
        f"{LOGS}/logit_lens/all.log",
    script:
        "../workflow_scripts/logit_lens_table.py"
