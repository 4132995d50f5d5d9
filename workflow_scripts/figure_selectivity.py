from langneurons.steps.figures import selectivity_figure_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    selectivity_figure_step(
        table_path=snakemake.input.table,
        goal=snakemake.params.goal,
        png_path=snakemake.output.png,
        svg_path=snakemake.output.svg,
    )
