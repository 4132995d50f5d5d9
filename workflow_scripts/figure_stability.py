from langneurons.steps.figures import stability_figure_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    stability_figure_step(
        stability_path=snakemake.input.stability,
        set_kind=snakemake.params.set_kind,
        png_path=snakemake.output.png,
        svg_path=snakemake.output.svg,
    )
