from langneurons.steps.finetune import finetune_results_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    finetune_results_step(
        table_paths=snakemake.input.tables,
        item_paths=snakemake.input.per_item,
        uncertainty=snakemake.params.uncertainty,
        out_path=snakemake.output[0],
    )
