from langneurons.steps.logit_lens import logit_lens_table_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    logit_lens_table_step(paths=snakemake.input.tables, out_path=snakemake.output[0])
