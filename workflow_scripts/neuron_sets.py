from langneurons.steps.logs import logged
from langneurons.steps.neurons import neuron_sets_step

with logged(snakemake.log):
    neuron_sets_step(
        count_paths=dict(zip(snakemake.params.languages, snakemake.input.counts)),
        rho=snakemake.params.rho,
        set_kinds=snakemake.params.set_kinds,
        stages=snakemake.params.stages,
        neurons_path=snakemake.output.neurons,
        summary_path=snakemake.output.summary,
        overlap_path=snakemake.output.overlap,
        agreement_path=snakemake.output.agreement,
        lape=snakemake.params.lape,
        record_path=snakemake.output.record,
    )
