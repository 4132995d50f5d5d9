from langneurons.steps.logs import logged
from langneurons.steps.selectivity import selectivity_cell_step

# execution settings (batch size, device map) are read here, not passed as params: no result depends on them
execution = snakemake.config["execution"]

with logged(snakemake.log):
    selectivity_cell_step(
        corpus_paths=dict(zip(snakemake.params.languages, snakemake.input.corpora)),
        count_paths=dict(zip(snakemake.params.languages, snakemake.input.counts)),
        model_params={**snakemake.params.model, "device_map": execution["device_map"]},
        model_dir=snakemake.input.model[0] if snakemake.input.model else None,
        cell={
            "method": snakemake.wildcards.method,
            "top_k": snakemake.wildcards.top_k,
            "set_kind": snakemake.wildcards.set_kind,
        },
        rho=snakemake.params.rho,
        targets=snakemake.params.targets,
        control_seeds=snakemake.params.control_seeds,
        settings={**snakemake.params.evaluation, **execution["evaluation"]},
        out_path=snakemake.output.cell,
        record_path=snakemake.output.record,
    )
