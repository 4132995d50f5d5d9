from langneurons.steps.corpus import sample_corpus_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    sample_corpus_step(
        source=snakemake.params.source,
        language=snakemake.wildcards.language,
        split_sizes=snakemake.params.split_sizes,
        seed=snakemake.params.seed,
        filters=snakemake.params.filters,
        parquet_path=snakemake.output.corpus,
        manifest_path=snakemake.output.manifest,
    )
