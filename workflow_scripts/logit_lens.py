from langneurons.steps.common import logged
from langneurons.steps.logit_lens import logit_lens_step

with logged(snakemake.log):
    logit_lens_step(
        corpus_path=snakemake.input.corpus,
        token_table_path=snakemake.input.tokens,
        model_params=snakemake.params.model,
        model_dir=snakemake.input.model[0] if snakemake.input.model else None,
        language=snakemake.wildcards.language,
        condition=snakemake.wildcards.condition,
        settings=snakemake.params.settings,
        neurons_path=snakemake.input.neurons[0] if snakemake.input.neurons else None,
        set_kind=snakemake.params.set_kind,
        threads=snakemake.threads,
        out_path=snakemake.output[0],
    )
