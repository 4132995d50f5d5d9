from langneurons.steps.common import logged
from langneurons.steps.corpus import train_demo_model_step

with logged(snakemake.log):
    train_demo_model_step(
        corpus_paths=snakemake.input.corpora,
        model_dir=snakemake.output.model,
        settings={"num_threads": snakemake.threads, **snakemake.params.settings},
    )
