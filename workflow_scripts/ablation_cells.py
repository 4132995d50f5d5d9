from langneurons.steps.ablation import ablation_cells_step
from langneurons.steps.logs import logged

# execution settings (batch size, device map) are read here, not passed as params: no result depends on them
execution = snakemake.config["execution"]

with logged(snakemake.log):
    ablation_cells_step(
        corpus_paths=dict(zip(snakemake.params.languages, snakemake.input.corpora)),
        neurons_path=snakemake.input.neurons[0] if snakemake.input.neurons else None,
        model_params={**snakemake.params.model, "device_map": execution["device_map"]},
        model_dir=snakemake.input.model[0] if snakemake.input.model else None,
        cells=snakemake.params.cells,
        stages=snakemake.params.stages,
        settings={**snakemake.params.settings, **execution["evaluation"], "seed": snakemake.params.seed},
        outputs=[
            {"cell": cell, "items": items, "record": record}
            for cell, items, record in zip(snakemake.output.cells, snakemake.output.per_item, snakemake.output.records)
        ],
    )
