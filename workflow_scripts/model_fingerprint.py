from langneurons.steps.logs import logged
from langneurons.steps.model import model_fingerprint_step

with logged(snakemake.log):
    model_fingerprint_step(
        path=snakemake.params.path, expected_sha256=snakemake.params.sha256, out_path=snakemake.output[0]
    )
