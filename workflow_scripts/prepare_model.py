from langneurons.steps.logs import logged
from langneurons.steps.model import prepare_model_step

with logged(snakemake.log):
    prepare_model_step(model_params=snakemake.params.model, out_dir=snakemake.output.model)
