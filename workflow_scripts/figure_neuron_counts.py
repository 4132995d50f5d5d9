from langneurons.steps.figures import neuron_counts_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    neuron_counts_step(
        neurons_path=snakemake.input.neurons,
        summary_path=snakemake.input.summary,
        set_kind=snakemake.params.set_kind,
        by=snakemake.params.by,
        stages=snakemake.params.stages,
        png_path=snakemake.output.png,
        svg_path=snakemake.output.svg,
    )
