"""langneurons: language-specific neurons in large language models.

Implements PLND (parallel language-specific neuron detection) and the MWork
experiments of Zhao et al., "How do Large Language Models Handle
Multilingualism?" (NeurIPS 2024) on stock Hugging Face transformers.
"""

__version__ = "0.1.0"
