from langneurons.steps.demo_model import train_demo_model_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    train_demo_model_step(
        corpus_paths=snakemake.input.corpora,
        model_dir=snakemake.output.model,
        settings={"num_threads": snakemake.threads, **snakemake.params.settings},
    )
