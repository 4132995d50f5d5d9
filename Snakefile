# langneurons: language-specific neurons (PLND) and the MWork experiments, as one Snakemake DAG.
#   snakemake --cores 2                                   # the offline demo, end to end
#   snakemake --cores 2 --configfile configs/<preset>.yaml
#   snakemake --profile profiles/slurm --configfile ...    # on a SLURM cluster
from pathlib import Path

from snakemake.utils import min_version, validate

from langneurons.steps.common import check_config

min_version("9.0")


configfile: Path(workflow.basedir) / "config.yaml"


validate(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml", set_default=True)
check_config(config)


include: "rules/common.smk"
include: "rules/corpus.smk"
include: "rules/demo_model.smk"
include: "rules/scoring.smk"
include: "rules/neurons.smk"
include: "rules/logit_lens.smk"
include: "rules/report.smk"
include: "rules/figures.smk"
include: "rules/ablation.smk"
include: "rules/finetune.smk"


rule all:
    input:
        final_outputs(),
