"""A tiny Llama trained in seconds on three synthetic "languages", for tests that need learned structure.

Each language is a random first-order Markov chain over its own token range, so a
model must learn language-specific statistics to predict it. Three, because with
two languages a language's specific neurons (activated in it but not in every
language) are exactly its exclusive ones (not in any other), and a test could not
tell the two set kinds apart.
"""

from __future__ import annotations

import functools

import torch
from transformers import LlamaConfig, LlamaForCausalLM

RANGES = {"aa": (3, 31), "bb": (31, 59), "cc": (59, 87)}
VOCAB = 90


def _chains(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    chains = {}
    for language, (lo, hi) in RANGES.items():
        size = hi - lo
        logits = torch.randn(size, size, generator=gen) * 3
        chains[language] = torch.softmax(logits, dim=-1)
    return chains


def sample_documents(language: str, n_docs: int, length: int, seed: int) -> torch.Tensor:
    """``[n_docs, length]`` token ids of one synthetic language."""
    lo, _ = RANGES[language]
    chain = _chains()[language]
    gen = torch.Generator().manual_seed(seed)
    state = torch.randint(chain.shape[0], (n_docs,), generator=gen)
    tokens = [state]
    for _ in range(length - 1):
        state = torch.multinomial(chain[state], 1, generator=gen).squeeze(1)
        tokens.append(state)
    return torch.stack(tokens, dim=1) + lo


@functools.lru_cache(maxsize=1)
def trained_model(steps: int = 150) -> LlamaForCausalLM:
    """Trained once per test session (seconds); callers must not modify it (deepcopy first)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and leaves the other cores to parallel tests
    try:
        for step in range(steps):
            batch = torch.cat([sample_documents(lang, 8, 32, seed=1000 + step) for lang in RANGES])
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
