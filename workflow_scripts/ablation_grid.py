from langneurons.steps.ablation import ablation_grid_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    ablation_grid_step(cell_paths=snakemake.input.cells, out_path=snakemake.output[0])
