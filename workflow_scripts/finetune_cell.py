from langneurons.steps.finetune import finetune_cell_step
from langneurons.steps.logs import logged

# execution settings (batch size, device map) are read here, not passed as params: no result depends on them
execution = snakemake.config["execution"]

with logged(snakemake.log):
    finetune_cell_step(
        corpus_paths=dict(zip(snakemake.params.languages, snakemake.input.corpora)),
        neurons_path=snakemake.input.neurons[0] if snakemake.input.neurons else None,
        model_params={**snakemake.params.model, "device_map": execution["device_map"]},
        model_dir=snakemake.input.model[0] if snakemake.input.model else None,
        target_language=snakemake.wildcards.target,
        method=snakemake.wildcards.method,
        set_kind=snakemake.params.set_kind,
        training=snakemake.params.training,
        control_seed=snakemake.params.control_seed,
        evaluation_settings={**snakemake.params.evaluation, **execution["evaluation"], "seed": snakemake.params.seed},
        artefact_dir=snakemake.output.artefact,
        table_path=snakemake.output.table,
        items_path=snakemake.output.per_item,
    )
