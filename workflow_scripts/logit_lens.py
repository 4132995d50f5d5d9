from langneurons.steps.logit_lens import logit_lens_step
from langneurons.steps.logs import logged

# execution settings (batch size, device map) are read here, not passed as params: no result depends on them
execution = snakemake.config["execution"]

with logged(snakemake.log):
    logit_lens_step(
        corpus_path=snakemake.input.corpus,
        token_table_path=snakemake.input.tokens,
        model_params={**snakemake.params.model, "device_map": execution["device_map"]},
        model_dir=snakemake.input.model[0] if snakemake.input.model else None,
        language=snakemake.wildcards.language,
        condition=snakemake.wildcards.condition,
        settings={**snakemake.params.settings, **execution["logit_lens"]},
        neurons_path=snakemake.input.neurons[0] if snakemake.input.neurons else None,
        set_kind=snakemake.params.set_kind,
        threads=snakemake.threads,
        out_path=snakemake.output[0],
    )
