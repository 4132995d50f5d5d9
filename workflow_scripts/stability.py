from langneurons.steps.logs import logged
from langneurons.steps.neurons import stability_step

with logged(snakemake.log):
    stability_step(
        shard_paths={lang: list(snakemake.input[f"scores_{lang}"]) for lang in snakemake.params.languages},
        top_k=snakemake.params.top_k,
        rho=snakemake.params.rho,
        settings=snakemake.params.settings,
        seed=snakemake.params.seed,
        out_path=snakemake.output.table,
        record_path=snakemake.output.record,
    )
