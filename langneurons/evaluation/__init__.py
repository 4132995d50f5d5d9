"""Evaluation harness: every metric, every language, under any deactivation.

The ablation grid (method.md section 6.2) deactivates a neuron set and then
evaluates *every* language on *every* metric; targeted fine-tuning is judged
by the same metrics. This package therefore only runs the model: the caller
wraps a call in ``with deactivate(model, neurons):`` and the hooks act on the
forward passes made here.

One module per concern: :mod:`~langneurons.evaluation.scoring` (sequence
log-probabilities, perplexity, multiple choice), :mod:`~.items` (continuation
items and their distractors), :mod:`~.generation` (greedy generation,
fidelity), :mod:`~.langid` (language identification), :mod:`~.metrics`
(exact match, F1, ROUGE-L, numbers), :mod:`~.benchmarks` (benchmark and
document loaders), :mod:`~.tasks` (the benchmark metrics, :func:`evaluate`
and :data:`METRICS`), :mod:`~.uncertainty` (bootstrap intervals),
:mod:`~.common` (errors, language codes, checks).

Every result carries its per-document or per-item values (``per_item``),
so that its bootstrap interval (:func:`metric_interval`) and the interval of
an ablation's ratio over the same items (:func:`paired_metric_interval`) can
be computed; multiple-choice results carry their measured chance level
(:func:`chance_level`).

Metrics (all reachable through :func:`evaluate` / :data:`METRICS`):

``perplexity``
    Token-weighted held-out perplexity: ``exp(sum NLL / n tokens)`` over all
    documents of one language (not a mean of per-document perplexities,
    which would over-weight short documents).
``continuation``
    Multiple-choice continuation of held-out passages (first sentences as
    context, the true next sentences against 3 distractor continuations),
    built by :func:`build_continuation_items` so that the items are parallel
    across languages; chosen by continuation log-likelihood.
``fidelity``
    Greedy continuations of prompts in language L; the share that py3langid
    identifies as L (the paper's "generation collapses" effect, measured
    without a benchmark).
``mgsm``, ``xquad``, ``xcopa``, ``xcsqa``, ``xlsum``
    The paper's benchmarks, from the Hugging Face hub or from local files in
    the same formats (and the local formats of the project's shared data).

Correctness rules that every metric follows:

* batched with explicit padding masks; scoring passes position ids derived
  from the mask, so results do not depend on batch size or padding side;
* ``torch.no_grad()``, the model in eval mode (restored afterwards);
* inputs go to the device of the input embeddings (works with
  ``device_map`` dispatch); log-probabilities are computed in float32 and
  summed in float64; one host transfer per batch, never per token;
* all scores are fractions in [0, 1] (accuracy, F1, ROUGE-L F, exact match,
  share), except perplexity.

Bad input raises :class:`EvaluationError` (a ``ValueError``) naming what is
wrong and how to fix it; a metric called without the data it needs raises
:class:`MissingDataError`.
"""

from __future__ import annotations

from langneurons.evaluation.benchmarks import BENCHMARKS, load_benchmark, load_documents
from langneurons.evaluation.common import EvaluationError, MissingDataError, normalize_language
from langneurons.evaluation.generation import fidelity, greedy_generate
from langneurons.evaluation.items import ITEM_COLUMNS, build_continuation_items, continuation, sentence_boundaries
from langneurons.evaluation.langid import UNDETERMINED, identify_languages
from langneurons.evaluation.metrics import (
    RougeScore,
    exact_match,
    extract_number,
    normalize_answer,
    numbers_match,
    rouge_l,
    token_f1,
)
from langneurons.evaluation.scoring import (
    PerplexityResult,
    chance_level,
    document_nll,
    multiple_choice,
    perplexity,
    score_continuations,
    sequence_logprobs,
    uniform_chance,
)
from langneurons.evaluation.tasks import (
    METRICS,
    XCOPA_CONNECTORS,
    Metric,
    evaluate,
    metric_interval,
    mgsm,
    paired_metric_changes,
    paired_metric_interval,
    results_table,
    xcopa,
    xcopa_item,
    xcsqa,
    xlsum,
    xquad,
)
from langneurons.evaluation.uncertainty import (
    Interval,
    PairedChange,
    bootstrap_interval,
    mean_statistic,
    paired_change_intervals,
    paired_ratio_interval,
    perplexity_statistic,
)

__all__ = [
    "BENCHMARKS",
    "EvaluationError",
    "ITEM_COLUMNS",
    "Interval",
    "METRICS",
    "Metric",
    "PairedChange",
    "MissingDataError",
    "PerplexityResult",
    "RougeScore",
    "UNDETERMINED",
    "XCOPA_CONNECTORS",
    "bootstrap_interval",
    "build_continuation_items",
    "chance_level",
    "continuation",
    "document_nll",
    "evaluate",
    "exact_match",
    "extract_number",
    "fidelity",
    "greedy_generate",
    "identify_languages",
    "load_benchmark",
    "load_documents",
    "mean_statistic",
    "metric_interval",
    "mgsm",
    "multiple_choice",
    "normalize_answer",
    "normalize_language",
    "numbers_match",
    "paired_change_intervals",
    "paired_metric_changes",
    "paired_metric_interval",
    "paired_ratio_interval",
    "perplexity",
    "perplexity_statistic",
    "results_table",
    "rouge_l",
    "score_continuations",
    "sentence_boundaries",
    "sequence_logprobs",
    "token_f1",
    "uniform_chance",
    "xcopa",
    "xcopa_item",
    "xcsqa",
    "xlsum",
    "xquad",
]
