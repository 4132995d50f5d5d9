from langneurons.steps.logs import logged
from langneurons.steps.selectivity import selectivity_table_step

with logged(snakemake.log):
    selectivity_table_step(
        cell_paths=snakemake.input.cells,
        settings=snakemake.params.settings,
        seed=snakemake.params.seed,
        table_path=snakemake.output.table,
        best_path=snakemake.output.best,
    )
