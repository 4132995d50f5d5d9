from langneurons.steps.logs import logged
from langneurons.steps.scoring import score_shard_step

# execution settings (batch size, device map) are read here, not passed as params: no result depends on them
execution = snakemake.config["execution"]

with logged(snakemake.log):
    score_shard_step(
        corpus_path=snakemake.input.corpus,
        model_params={**snakemake.params.model, "device_map": execution["device_map"]},
        model_dir=snakemake.input.model[0] if snakemake.input.model else None,
        shard=int(snakemake.wildcards.shard),
        n_shards=snakemake.params.shards,
        scoring={**snakemake.params.scoring, **execution["scoring"]},
        threads=snakemake.threads,
        out_path=snakemake.output[0],
    )
