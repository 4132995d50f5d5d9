from langneurons.steps.ablation import ablation_grid_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    ablation_grid_step(
        cell_paths=snakemake.input.cells,
        item_paths=snakemake.input.per_item,
        uncertainty=snakemake.params.uncertainty,
        out_path=snakemake.output[0],
    )
