# Figures, one rule each, from the tables their data lives in: a change in one table redraws only
# its figures. Each writes <name>.png (in the report) and <name>.svg under results/<run>/figures/.
# (figures.set_kind is checked with the rest of the configuration, in langneurons.config.)


localrules:
    figure_language_ratio,
    figure_neuron_counts,
    figure_overlap,
    figure_overlap_lape,
    figure_ablation,
    figure_finetune,
    figure_stability,


rule figure_language_ratio:
    input:
        ratios=expand(f"{RESULTS}/logit_lens/none/{{language}}.parquet", language=LANGUAGES),
        code=library_of("figure_language_ratio.py"),
    output:
        png=figure_report(
            f"{FIGURES}/fig1_language_ratio.png", "language_ratio", "1. Logit lens", "language ratio per layer"
        ),
        svg=f"{FIGURES}/fig1_language_ratio.svg",
    params:
        stages=canonical(config["stages"]),
        languages=LANGUAGES,
        title=None,
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/figures/fig1_language_ratio.log",
    conda:
        ENV
    script:
        "../workflow_scripts/figure_language_ratio.py"


if LENS_DEACTIVATE:

    localrules:
        figure_language_ratio_deactivated,

    rule figure_language_ratio_deactivated:
        input:
            ratios=expand(
                f"{RESULTS}/logit_lens/{LENS_DEACTIVATE}_deactivated/{{language}}.parquet", language=LANGUAGES
            ),
            code=library_of("figure_language_ratio.py"),
        output:
            png=figure_report(
                f"{FIGURES}/fig1b_language_ratio_deactivated.png",
                "language_ratio_deactivated",
                "1. Logit lens",
                f"language ratio, {LENS_DEACTIVATE} neurons deactivated",
            ),
            svg=f"{FIGURES}/fig1b_language_ratio_deactivated.svg",
        params:
            stages=canonical(config["stages"]),
            languages=LANGUAGES,
            title=f"Logit lens with each language's {LENS_DEACTIVATE} neurons deactivated",
        threads: cpus("light")
        resources:
            **job_resources("light"),
        log:
            f"{LOGS}/figures/fig1b_language_ratio_deactivated.log",
        conda:
            ENV
        script:
            "../workflow_scripts/figure_language_ratio.py"


rule figure_neuron_counts:
    input:
        neurons=f"{RESULTS}/neurons/neurons.parquet",
        summary=f"{RESULTS}/neurons/summary.parquet",
        code=library_of("figure_neuron_counts.py"),
    output:
        png=figure_report(f"{FIGURES}/fig2_neuron_counts.png", "neuron_counts", "2. Neuron sets", "neurons per layer"),
        svg=f"{FIGURES}/fig2_neuron_counts.svg",
    params:
        set_kind=config["figures"]["set_kind"],
        by=config["figures"]["neuron_counts_by"],
        stages=canonical(config["stages"]),
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/figures/fig2_neuron_counts.log",
    conda:
        ENV
    script:
        "../workflow_scripts/figure_neuron_counts.py"


rule figure_overlap:
    input:
        neurons=f"{RESULTS}/neurons/neurons.parquet",
        code=library_of("figure_overlap.py"),
    output:
        png=figure_report(f"{FIGURES}/fig3_overlap.png", "overlap", "2. Neuron sets", "overlap between languages"),
        svg=f"{FIGURES}/fig3_overlap.svg",
    params:
        set_kind=config["figures"]["set_kind"],
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/figures/fig3_overlap.log",
    conda:
        ENV
    script:
        "../workflow_scripts/figure_overlap.py"


rule figure_overlap_lape:
    input:
        neurons=f"{RESULTS}/neurons/neurons.parquet",
        code=library_of("figure_overlap.py"),
    output:
        png=figure_report(
            f"{FIGURES}/fig3b_overlap_lape.png", "overlap_lape", "2. Neuron sets", "overlap between languages (LAPE)"
        ),
        svg=f"{FIGURES}/fig3b_overlap_lape.svg",
    params:
        set_kind="lape",
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/figures/fig3b_overlap_lape.log",
    conda:
        ENV
    script:
        "../workflow_scripts/figure_overlap.py"


rule figure_ablation:
    input:
        grid=f"{RESULTS}/ablation/grid.parquet",
        code=library_of("figure_ablation.py"),
    output:
        png=figure_report(
            f"{FIGURES}/fig4_ablation_{{metric}}.png", "ablation", "3. Ablation (MWork)", "{metric}"
        ),
        svg=f"{FIGURES}/fig4_ablation_{{metric}}.svg",
    wildcard_constraints:
        metric=METRIC_RE,
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/figures/fig4_ablation_{{metric}}.log",
    conda:
        ENV
    script:
        "../workflow_scripts/figure_ablation.py"


rule figure_finetune:
    input:
        results=f"{RESULTS}/finetune/results.parquet",
        code=library_of("figure_finetune.py"),
    output:
        png=figure_report(
            f"{FIGURES}/fig5_finetune_{{metric}}.png", "finetune", "4. Targeted fine-tuning", "{metric}"
        ),
        svg=f"{FIGURES}/fig5_finetune_{{metric}}.svg",
    wildcard_constraints:
        metric=METRIC_RE,
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/figures/fig5_finetune_{{metric}}.log",
    conda:
        ENV
    script:
        "../workflow_scripts/figure_finetune.py"


rule figure_stability:
    input:
        stability=f"{RESULTS}/neurons/stability.parquet",
        code=library_of("figure_stability.py"),
    output:
        png=figure_report(
            f"{FIGURES}/fig6_stability.png", "stability", "2. Neuron sets", "stability against the document count"
        ),
        svg=f"{FIGURES}/fig6_stability.svg",
    params:
        set_kind=config["selection"]["stability"]["set_kind"],
    threads: cpus("light")
    resources:
        **job_resources("light"),
    log:
        f"{LOGS}/figures/fig6_stability.log",
    conda:
        ENV
    script:
        "../workflow_scripts/figure_stability.py"
