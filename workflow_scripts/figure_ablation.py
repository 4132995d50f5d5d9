from langneurons.steps.figures import ablation_figure_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    ablation_figure_step(
        grid_path=snakemake.input.grid,
        metric=snakemake.wildcards.metric,
        png_path=snakemake.output.png,
        svg_path=snakemake.output.svg,
    )
