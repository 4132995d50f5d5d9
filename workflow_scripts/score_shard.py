from langneurons.steps.common import logged
from langneurons.steps.scoring import score_shard_step

with logged(snakemake.log):
    score_shard_step(
        corpus_path=snakemake.input.corpus,
        model_params=snakemake.params.model,
        model_dir=snakemake.input.model[0] if snakemake.input.model else None,
        shard=int(snakemake.wildcards.shard),
        n_shards=snakemake.params.shards,
        scoring=snakemake.params.scoring,
        threads=snakemake.threads,
        out_path=snakemake.output[0],
    )
