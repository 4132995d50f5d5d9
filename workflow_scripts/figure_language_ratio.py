from langneurons.steps.figures import language_ratio_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    language_ratio_step(
        ratio_paths=snakemake.input.ratios,
        stages=snakemake.params.stages,
        languages=snakemake.params.languages,
        title=snakemake.params.title,
        png_path=snakemake.output.png,
        svg_path=snakemake.output.svg,
    )
