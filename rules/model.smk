# Where the analysed model comes from, when it is not the demo model the workflow trains.
# - A configured GGUF (model.gguf_file, model.gguf_package) is dequantised once by prepare_model into a
#   plain save_pretrained folder, which every model job then loads in seconds.
# - A local model (model.id a folder, or a local GGUF file) is a tracked input: model_fingerprint records
#   the SHA-256 of its files. Its parameter is that hash, computed while the workflow is planned (from a
#   cache of per-file hashes, re-read only for files whose stat changed), so the rule reruns, and with it
#   everything that loads the model, exactly when the content changes: touching or copying the files in
#   place reruns nothing. (Snakemake schedules a job's dependants as soon as the job itself is scheduled,
#   so a fingerprint job that ran on every touch would rerun everything, whatever it then wrote.)
#   It lists no library code as input: the hash in its parameter already comes from the current library.


localrules:
    model_fingerprint,


rule model_fingerprint:
    output:
        MODEL_FINGERPRINT,
    params:
        path=str(LOCAL_MODEL),
        sha256=LOCAL_MODEL_SHA256,
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/model_fingerprint.log",
    conda:
        ENV
    script:
        "../workflow_scripts/model_fingerprint.py"


rule prepare_model:
    input:
        fingerprint=gguf_fingerprint(),
        code=library_of("prepare_model.py"),
    output:
        model=directory(CONVERTED_MODEL),
    params:
        model=gguf_params(),
    threads: cpus("scoring")
    resources:
        # converting dequantises on the CPU: the scoring jobs' memory and time, never a GPU
        **{key: value for key, value in job_resources("scoring").items() if key != "gpu"},
    log:
        f"{LOGS}/prepare_model.log",
    benchmark:
        f"{BENCHMARKS}/prepare_model.tsv"
    conda:
        ENV
    script:
        "../workflow_scripts/prepare_model.py"
