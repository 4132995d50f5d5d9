# The Snakemake report: `snakemake --report report.html` writes one self-contained HTML page with
# every figure the run made. Figure rules mark their PNG with figure_report() (rules/common.smk);
# the captions are reStructuredText in report/ (Jinja templates: they may read snakemake.config).


report: "../report/workflow.rst"
