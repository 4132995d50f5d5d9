from langneurons.steps.ablation import ablation_cell_step
from langneurons.steps.logs import logged

# execution settings (batch size, device map) are read here, not passed as params: no result depends on them
execution = snakemake.config["execution"]

with logged(snakemake.log):
    control = snakemake.wildcards.control
    ablation_cell_step(
        corpus_paths=dict(zip(snakemake.params.languages, snakemake.input.corpora)),
        neurons_path=snakemake.input.neurons[0] if snakemake.input.neurons else None,
        model_params={**snakemake.params.model, "device_map": execution["device_map"]},
        model_dir=snakemake.input.model[0] if snakemake.input.model else None,
        cell={
            "condition": snakemake.wildcards.condition,
            "detector": snakemake.wildcards.detector,
            "set_kind": snakemake.wildcards.set_kind,
            "target_language": snakemake.wildcards.target,
            "control_seed": None if control == "real" else int(control.removeprefix("random")),
        },
        stages=snakemake.params.stages,
        settings={**snakemake.params.settings, **execution["evaluation"], "seed": snakemake.params.seed},
        out_path=snakemake.output.cell,
        record_path=snakemake.output.record,
        per_item_path=snakemake.output.per_item,
    )
