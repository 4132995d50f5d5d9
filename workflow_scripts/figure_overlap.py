from langneurons.steps.figures import overlap_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    overlap_step(
        neurons_path=snakemake.input.neurons,
        set_kind=snakemake.params.set_kind,
        png_path=snakemake.output.png,
        svg_path=snakemake.output.svg,
    )
