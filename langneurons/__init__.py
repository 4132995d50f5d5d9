"""langneurons: language-specific neurons in large language models.

Implements PLND (parallel language-specific neuron detection) and the MWork
experiments of Zhao et al., "How do Large Language Models Handle
Multilingualism?" (NeurIPS 2024) on stock Hugging Face transformers.
"""

from langneurons.architectures import SITES, site_sizes
from langneurons.interventions import deactivate
from langneurons.scoring import score_batch

__version__ = "0.1.0"

__all__ = ["SITES", "deactivate", "score_batch", "site_sizes", "__version__"]
