# The Snakemake report: `snakemake --report report.html` writes one self-contained HTML page with
# every figure the run made. Figure rules mark their PNG with figure_report(); the captions are
# reStructuredText in report/ (Jinja templates: they may read snakemake.config).

REPORT_DIR = Path(workflow.basedir) / "report"


report: "../report/workflow.rst"


def figure_report(path, caption, category, subcategory):
    """``path`` as a report item of ``category``/``subcategory``, captioned by ``report/<caption>.rst``."""
    return report(path, caption=str(REPORT_DIR / f"{caption}.rst"), category=category, subcategory=subcategory)
