from langneurons.steps.logs import logged
from langneurons.steps.neurons import count_activations_step

with logged(snakemake.log):
    count_activations_step(
        shard_paths=snakemake.input.shards,
        top_k=snakemake.params.top_k,
        language=snakemake.wildcards.language,
        out_path=snakemake.output[0],
    )
