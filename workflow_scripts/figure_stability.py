from langneurons.steps.common import logged
from langneurons.steps.figures import stability_figure_step

with logged(snakemake.log):
    stability_figure_step(
        stability_path=snakemake.input.stability,
        set_kind=snakemake.params.set_kind,
        png_path=snakemake.output.png,
        svg_path=snakemake.output.svg,
    )
