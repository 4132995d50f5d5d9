# langneurons: language-specific neurons (PLND) and the MWork experiments, as one Snakemake DAG.
#   snakemake --cores 2                                   # the offline demo, end to end
#   snakemake --cores 2 --configfile configs/<preset>.yaml
#   snakemake --profile profiles/slurm-gpu --configfile configs/<preset>.yaml   # on a SLURM cluster with GPUs
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

# One copy of the library: the workflow plans with, and every job (local, on SLURM, in the conda
# environment) imports, the langneurons beside this Snakefile, never another installed copy.
# (--sdm conda: envs/langneurons.post-deploy.sh installs this copy, found through LANGNEURONS_WORKFLOW.)
sys.path.insert(0, workflow.basedir)
python_path = [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path not in ("", workflow.basedir)]
os.environ.update(PYTHONPATH=os.pathsep.join([workflow.basedir, *python_path]), LANGNEURONS_WORKFLOW=workflow.basedir)
import langneurons

if Path(langneurons.__file__).resolve().parent != (Path(workflow.basedir) / "langneurons").resolve():
    raise WorkflowError(
        f"langneurons was already imported from {Path(langneurons.__file__).parent}, not from this workflow's "
        f"copy {Path(workflow.basedir) / 'langneurons'}: run Snakemake in a fresh process"
    )

from langneurons.config import apply_schema, check_config, load_schema


configfile: Path(workflow.basedir) / "config.yaml"


# The schema fills in every default; then the checks it cannot express. Both offline, both torch-free.
apply_schema(config, load_schema(Path(workflow.basedir) / "schemas" / "config.schema.yaml"))
check_config(config)


include: "rules/common.smk"
include: "rules/corpus.smk"
include: "rules/demo_model.smk"
include: "rules/model.smk"
include: "rules/scoring.smk"
include: "rules/neurons.smk"
include: "rules/logit_lens.smk"
include: "rules/report.smk"
include: "rules/figures.smk"
include: "rules/ablation.smk"
include: "rules/finetune.smk"
include: "rules/selectivity.smk"


rule all:
    input:
        final_outputs(),
        selectivity_outputs(),
