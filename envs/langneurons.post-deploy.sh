#!/usr/bin/env bash
# Run by Snakemake inside the new environment of envs/langneurons.yaml (see there): installs the
# workflow's own copy of langneurons, editable, with its dependencies from pyproject.toml.
set -euo pipefail
: "${LANGNEURONS_WORKFLOW:?is unset: the Snakefile exports the workflow folder as LANGNEURONS_WORKFLOW}"
python -m pip install --no-input -e "${LANGNEURONS_WORKFLOW}"
