"""langneurons: language-specific neurons in large language models.

Implements PLND (parallel language-specific neuron detection) and the MWork
experiments of Zhao et al., "How do Large Language Models Handle
Multilingualism?" (NeurIPS 2024) on stock Hugging Face transformers.

In three lines (see the README's "Library" section)::

    sets = langneurons.detect(model, tokenizer, {"fr": fr_docs, "zh": zh_docs}, top_k=0.01, rho=0.9)
    with langneurons.ablate(model, sets.by_language()["fr"]):
        ...  # the model without its French neurons

The names below load their module on first use (PEP 562), so that importing a
torch-free part of the package (``langneurons.plotting``, ``langneurons.config``,
``langneurons.neuronset``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "NeuronSet": "langneurons.neuronset",
    "NeuronSpace": "langneurons.neuronset",
    "SITES": "langneurons.neuronset",
    "ablate": "langneurons.interventions",
    "deactivate": "langneurons.interventions",
    "detect": "langneurons.detection",
    "score_batch": "langneurons.scoring",
    "site_sizes": "langneurons.architectures",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'langneurons' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
