from langneurons.steps.logit_lens import token_languages_step
from langneurons.steps.logs import logged

with logged(snakemake.log):
    token_languages_step(
        corpus_paths=dict(zip(snakemake.params.languages, snakemake.input.corpora)),
        tokenizer_params=snakemake.params.tokenizer,
        model_dir=snakemake.input.model[0] if snakemake.input.model else None,
        splits=snakemake.params.splits,
        ratio=snakemake.params.token_ratio,
        min_count=snakemake.params.min_count,
        out_path=snakemake.output[0],
    )
