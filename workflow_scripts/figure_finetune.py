from langneurons.steps.figures import finetune_figure_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    finetune_figure_step(
        results_path=snakemake.input.results,
        metric=snakemake.wildcards.metric,
        png_path=snakemake.output.png,
        svg_path=snakemake.output.svg,
    )
