"""The logit-lens language ratio: which language each layer "thinks" in.

Evidence (a) of the MWork hypothesis (method.md §1, §6.1): decode every
layer's hidden state with the unembedding at every token position of
language-L documents, keep the top-k tokens, and count how many of them are
English, how many are L and how many are neither. The paper reads a dip of
L and a rise of English in the middle layers as "thinking in English".

Two ingredients live here:

*Token attribution* (:class:`TokenLanguages`): which language a vocabulary
entry belongs to. The primary attributor, :func:`token_language_table`, uses
token statistics of the sampled corpora: a token belongs to L when its
relative frequency in L's corpus is at least ``ratio`` times its relative
frequency in every other language's corpus. Shared tokens (punctuation,
digits, sub-words common to related languages) therefore belong to no
language and count as "other", which is what a ratio needs: a token that is
as frequent in English as in French is no evidence for either. A second,
optional attributor, :func:`langid_token_table`, runs a language identifier
(py3langid) on each token's string; :func:`combine_token_tables` merges two.

*Decoding* (:func:`layer_label_counts`, :func:`language_ratio`): one forward
pass per batch with ``output_hidden_states=True``; ``hidden_states[i + 1]`` is
the output of layer ``i``. HF returns the *last* entry after the final norm
(transformers ties it to ``last_hidden_state``), so the last layer is decoded
as is and the final-norm option only affects the other layers; this keeps
the last layer equal to the model's own prediction, whatever the option.
Applying the final norm to intermediate layers is the default (Wendler et al.
2024, "Do Llamas work in English?"); the authors' released code omits it
(``final_norm=False``). Gemma-2's final logit soft-capping is monotonic and
does not change a top-k, so it is not applied.

Only non-padding positions are decoded, so results do not depend on the
padding side or the batch composition. Counts are accumulated on the
unembedding's device and copied to the host once per batch; inputs go to
the embedding's device and each hidden state to the unembedding's device,
so models dispatched with ``device_map`` work. Neuron deactivation
(:func:`langneurons.interventions.deactivate`) composes: this module only
runs the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from langneurons.architectures import check_batch, forward_inputs, get_architecture, optional_submodule
from langneurons.batching import encode, pad_token_id, padded_batches

__all__ = [
    "CATEGORIES",
    "OTHER",
    "RATIO_COLUMNS",
    "LogitLensError",
    "TokenLanguages",
    "batches_from_texts",
    "combine_token_tables",
    "count_tokens",
    "language_ratio",
    "language_ratios",
    "langid_token_table",
    "layer_label_counts",
    "token_language_table",
]

#: The label of a token that belongs to no language.
OTHER = -1
#: Categories of the language-ratio table, in plotting order.
CATEGORIES: tuple[str, ...] = ("en", "target", "other")
#: Columns of the tidy language-ratio table.
RATIO_COLUMNS: tuple[str, ...] = (
    "language",
    "layer",
    "category",
    "share",
    "count",
    "n_positions",
    "top_k",
    "final_norm",
)
#: Default memory bound of one chunk of logits (positions x vocabulary x 4 bytes).
DEFAULT_CHUNK_BYTES = 256 * 2**20


class LogitLensError(ValueError):
    """The logit lens got inconsistent or unusable inputs."""


# ---- token attribution --------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenLanguages:
    """A language label for every vocabulary entry.

    ``labels[token]`` is an index into ``languages`` or :data:`OTHER` (-1).
    ``source`` records how the labels were made (for provenance).
    """

    languages: tuple[str, ...]
    labels: torch.Tensor
    source: str = "statistics"

    def __post_init__(self) -> None:
        if len(set(self.languages)) != len(self.languages):
            raise LogitLensError(f"token table lists a language twice: {list(self.languages)}")
        if self.labels.dim() != 1 or self.labels.dtype != torch.long:
            raise LogitLensError("token table labels must be a 1-d long tensor, one label per vocabulary entry")
        if self.labels.numel() and (self.labels.min() < OTHER or self.labels.max() >= len(self.languages)):
            raise LogitLensError(f"token table labels must lie in -1..{len(self.languages) - 1}")

    @property
    def vocab_size(self) -> int:
        return int(self.labels.numel())

    def index(self, language: str) -> int:
        """Position of ``language`` in :attr:`languages`, with an error naming the known ones."""
        try:
            return self.languages.index(language)
        except ValueError:
            raise LogitLensError(
                f"language {language!r} is not in the token table (it has {', '.join(self.languages)}); "
                "build the table from token counts of every language you evaluate"
            ) from None

    def tokens_of(self, language: str) -> torch.Tensor:
        """Token ids attributed to ``language``."""
        return (self.labels == self.index(language)).nonzero().flatten()

    def summary(self) -> pd.DataFrame:
        """How many vocabulary entries each language (and "other") got: a sanity check."""
        counts = torch.bincount(self.labels + 1, minlength=len(self.languages) + 1).tolist()
        return pd.DataFrame({"language": ["other", *self.languages], "n_tokens": counts})


def count_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    """Occurrences of every token id among the non-padding positions, as a ``[vocab_size]`` int64 tensor."""
    ids = input_ids if attention_mask is None else input_ids[attention_mask.bool()]
    ids = ids.flatten().long()
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise LogitLensError(f"token ids must lie in 0..{vocab_size - 1}; got {int(ids.min())}..{int(ids.max())}")
    return torch.bincount(ids.cpu(), minlength=vocab_size)


def _as_count_vector(counts: Any, vocab_size: int, language: str) -> torch.Tensor:
    """A Counter/mapping {token_id: count} or an array-like of counts -> float64 ``[vocab_size]``."""
    if isinstance(counts, Mapping):
        vector = torch.zeros(vocab_size, dtype=torch.float64)
        if counts:
            ids = torch.tensor([int(k) for k in counts.keys()], dtype=torch.long)
            values = torch.tensor([float(v) for v in counts.values()], dtype=torch.float64)
            vector.index_put_((ids,), values, accumulate=True)
        return vector
    vector = torch.as_tensor(counts).to(torch.float64).flatten()
    if vector.numel() > vocab_size:
        raise LogitLensError(f"token counts of {language!r} have {vector.numel()} entries but vocab_size={vocab_size}")
    return torch.nn.functional.pad(vector, (0, vocab_size - vector.numel()))


def _inferred_vocab_size(token_counts: Mapping[str, Any]) -> int:
    size = 0
    for counts in token_counts.values():
        if isinstance(counts, Mapping):
            size = max(size, max((int(k) for k in counts), default=-1) + 1)
        else:
            size = max(size, int(torch.as_tensor(counts).numel()))
    return size


def token_language_table(
    token_counts: Mapping[str, Any],
    ratio: float = 5.0,
    min_count: int = 5,
    vocab_size: int | None = None,
) -> TokenLanguages:
    """Attribute tokens to languages by how much more frequent they are in one corpus.

    ``token_counts[L]`` is a ``Counter``/mapping ``{token_id: count}`` or a
    ``[vocab]`` tensor/array of counts over language L's sampled corpus (see
    :func:`count_tokens`). Token t belongs to L when

        count_L(t) >= min_count  and  f_L(t) >= ratio * f_L'(t) for every other L'

    with f the relative frequency (count / corpus size), and ``f_L(t) > f_L'(t)``
    so that ``ratio=1`` still gives one language per token. Relative, not raw,
    frequencies so that a larger English corpus does not claim every token.
    ``min_count`` keeps one-off tokens (noise) out. Tokens that no language
    claims are :data:`OTHER`. ``vocab_size`` defaults to the largest id seen;
    pass the model's vocabulary size so that every entry gets a label.
    """
    if not token_counts:
        raise LogitLensError("token_counts is empty: give token counts of at least one language")
    if not ratio >= 1:
        raise LogitLensError(f"ratio={ratio!r}: a token's frequency must be at least ratio >= 1 times the others'")
    if min_count < 0:
        raise LogitLensError(f"min_count={min_count!r} must be >= 0")
    languages = tuple(token_counts)
    size = vocab_size if vocab_size is not None else _inferred_vocab_size(token_counts)
    counts = torch.stack([_as_count_vector(token_counts[lang], size, lang) for lang in languages])
    totals = counts.sum(dim=1, keepdim=True)
    empty = [lang for lang, total in zip(languages, totals.flatten().tolist()) if total <= 0]
    if empty:
        raise LogitLensError(f"token counts of {empty} are all zero: their corpora are empty or were not counted")
    frequency = counts / totals
    if len(languages) == 1:
        best_freq, best = frequency[0], torch.zeros(size, dtype=torch.long)
        runner_up = torch.zeros(size, dtype=torch.float64)
    else:
        top = frequency.topk(2, dim=0)
        best_freq, runner_up, best = top.values[0], top.values[1], top.indices[0]
    best_count = counts.gather(0, best[None]).squeeze(0)
    claimed = (best_freq > runner_up) & (best_freq >= ratio * runner_up) & (best_count >= max(min_count, 1))
    labels = torch.where(claimed, best, torch.full_like(best, OTHER))
    return TokenLanguages(languages, labels, source=f"statistics(ratio={ratio:g}, min_count={min_count})")


def langid_token_table(
    tokenizer: Any,
    languages: Sequence[str],
    min_probability: float = 0.9,
    min_letters: int = 3,
    vocab_size: int | None = None,
) -> TokenLanguages:
    """Attribute tokens by running py3langid on each token's text (a second attributor).

    Each id is decoded alone (``tokenizer.decode([id])``); tokens with fewer
    than ``min_letters`` alphabetic characters are "other" (a language
    identifier cannot judge "ing" or "12"), and so are tokens whose most
    likely language among ``languages`` has a normalised probability below
    ``min_probability``. Codes must be ones py3langid knows (ISO 639-1).
    Per-token language ID is noisy for short sub-words; prefer the corpus
    statistics and use this to cross-check or to fill gaps
    (:func:`combine_token_tables`).
    """
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    unknown = [lang for lang in languages if lang not in identifier.nb_classes]
    if unknown:
        raise LogitLensError(
            f"py3langid cannot identify {unknown}; use ISO 639-1 codes it knows: "
            f"{', '.join(sorted(identifier.nb_classes))}"
        )
    if len(languages) < 2:
        raise LogitLensError("langid_token_table needs at least two languages to choose between")
    identifier.set_languages(list(languages))
    size = vocab_size if vocab_size is not None else len(tokenizer)
    index = {lang: i for i, lang in enumerate(languages)}
    labels = torch.full((size,), OTHER, dtype=torch.long)
    for token_id in range(min(size, len(tokenizer))):
        text = tokenizer.decode([token_id]).strip()
        if sum(ch.isalpha() for ch in text) < min_letters:
            continue
        language, probability = identifier.classify(text)
        if probability >= min_probability:
            labels[token_id] = index[language]
    return TokenLanguages(
        tuple(languages), labels, source=f"py3langid(min_probability={min_probability:g}, min_letters={min_letters})"
    )


def combine_token_tables(
    primary: TokenLanguages, secondary: TokenLanguages, rule: Literal["agree", "fill"] = "agree"
) -> TokenLanguages:
    """Merge two attributions of the same vocabulary.

    ``agree``: a token keeps a language only where both attributors give it
    that language (fewer, surer labels). ``fill``: the primary's label, or the
    secondary's where the primary says "other" (more labels). Languages are
    matched by name; the result lists the primary's first.
    """
    if rule not in ("agree", "fill"):
        raise LogitLensError(f"rule={rule!r}: use 'agree' or 'fill'")
    if primary.vocab_size != secondary.vocab_size:
        raise LogitLensError(
            f"token tables cover different vocabularies ({primary.vocab_size} vs {secondary.vocab_size} entries)"
        )
    languages = primary.languages + tuple(lang for lang in secondary.languages if lang not in primary.languages)
    remap = torch.tensor([languages.index(lang) for lang in secondary.languages] + [OTHER], dtype=torch.long)
    second = remap[secondary.labels]  # OTHER (-1) indexes the appended OTHER entry
    first = primary.labels
    if rule == "agree":
        labels = torch.where(first == second, first, torch.full_like(first, OTHER))
    else:
        labels = torch.where(first == OTHER, second, first)
    return TokenLanguages(languages, labels, source=f"{rule}({primary.source}, {secondary.source})")


# ---- decoding -----------------------------------------------------------------------------------


def _module_device(module: nn.Module, fallback: torch.device) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else fallback


def _unembedding(model: nn.Module) -> nn.Module:
    """The unembedding named in the architecture table."""
    return model.get_submodule(get_architecture(model).unembedding)


def _final_norm(model: nn.Module) -> nn.Module | None:
    """The final norm, or ``None`` for models without one (e.g. post-LN OPT-350m)."""
    return optional_submodule(model, get_architecture(model).final_norm)


def _post_norm_projection(model: nn.Module) -> nn.Module | None:
    """A projection between the final norm and the unembedding (OPT-350m's ``project_out``), if any."""
    return optional_submodule(model, get_architecture(model).post_norm_projection)


@dataclass(frozen=True)
class _Decoder:
    """What turns an intermediate hidden state into logits."""

    norm: nn.Module | None
    projection: nn.Module | None
    unembedding: nn.Module
    device: torch.device
    last_is_normed: bool

    def logits(self, hidden: torch.Tensor, apply_norm: bool, apply_projection: bool) -> torch.Tensor:
        if apply_norm and self.norm is not None:
            hidden = self.norm(hidden.to(_module_device(self.norm, self.device)))
        if apply_projection and self.projection is not None:
            hidden = self.projection(hidden.to(_module_device(self.projection, self.device)))
        return self.unembedding(hidden.to(self.device))


def _decoder(model: nn.Module) -> _Decoder:
    unembedding = _unembedding(model)
    device = _module_device(unembedding, torch.device("cpu"))
    # transformers ties hidden_states[-1] to last_hidden_state (after the final norm) unless a
    # config opts out; then the last layer is raw like the others.
    last_is_normed = getattr(model.config, "tie_last_hidden_states", None) is not False
    return _Decoder(_final_norm(model), _post_norm_projection(model), unembedding, device, last_is_normed)


def _decoded_positions(attention_mask: torch.Tensor, skip_first_tokens: int) -> torch.Tensor:
    """Bool ``[batch, tokens]``: non-padding positions from each document's ``skip_first_tokens``-th token on."""
    mask = attention_mask.bool()
    rank = attention_mask.long().cumsum(-1) - 1
    return mask & (rank >= skip_first_tokens)


def _padded_labels(table: TokenLanguages, vocab: int, device: torch.device) -> torch.Tensor:
    """Table labels as bincount classes (languages 0..n-1, other = n), padded to the model's vocabulary."""
    if table.vocab_size > vocab:
        raise LogitLensError(
            f"the token table covers {table.vocab_size} tokens but the model's unembedding has {vocab}: "
            "was it built for another tokenizer?"
        )
    n = len(table.languages)
    labels = torch.where(table.labels == OTHER, torch.full_like(table.labels, n), table.labels)
    labels = torch.nn.functional.pad(labels, (0, vocab - table.vocab_size), value=n)
    return labels.to(device)


def layer_label_counts(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    table: TokenLanguages,
    top_k: int = 10,
    final_norm: bool = True,
    skip_first_tokens: int = 0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[torch.Tensor, int]:
    """Top-k decoded tokens of every layer, counted by language label, for one padded batch.

    Returns ``(counts, n_positions)``: ``counts`` is an int64 CPU tensor
    ``[n_layers, len(table.languages) + 1]`` (the last column is "other") and
    ``n_positions`` the number of decoded positions; each row sums to
    ``top_k * n_positions``. Every top-k token counts once, unweighted.
    ``skip_first_tokens`` leaves out each document's first tokens (e.g. BOS,
    whose hidden state is an attention sink rather than language).
    """
    check_batch(input_ids, attention_mask, LogitLensError)
    if top_k < 1:
        raise LogitLensError(f"top_k={top_k!r} must be >= 1")
    if skip_first_tokens < 0:
        raise LogitLensError(f"skip_first_tokens={skip_first_tokens!r} must be >= 0")
    decoder = _decoder(model)
    vocab = int(decoder.unembedding.weight.shape[0])
    if top_k > vocab:
        raise LogitLensError(f"top_k={top_k} exceeds the vocabulary size {vocab}")
    n_classes = len(table.languages) + 1
    labels = _padded_labels(table, vocab, decoder.device)
    positions = _decoded_positions(attention_mask, skip_first_tokens)
    n_positions = int(positions.sum())
    chunk = max(1, chunk_bytes // (vocab * 4))

    with torch.no_grad():
        # the lens decodes hidden states itself, so the full logits are skipped
        inputs = forward_inputs(model, input_ids, attention_mask, last_logit_only=True, output_hidden_states=True)
        hidden_states = model(**inputs).hidden_states[1:]
        counts = torch.zeros(len(hidden_states), n_classes, dtype=torch.long, device=decoder.device)
        if n_positions == 0:
            return counts.cpu(), 0
        for layer, hidden in enumerate(hidden_states):
            is_last = layer == len(hidden_states) - 1
            selected = hidden[positions.to(hidden.device)]  # [n_positions, hidden]
            apply_norm = final_norm and not (is_last and decoder.last_is_normed)
            apply_projection = not (is_last and decoder.last_is_normed)
            for part in selected.split(chunk):
                top = decoder.logits(part, apply_norm, apply_projection).topk(top_k, dim=-1).indices
                counts[layer] += torch.bincount(labels[top].flatten(), minlength=n_classes)
    return counts.cpu(), n_positions


def _ratio_frame(
    counts: torch.Tensor,
    n_positions: int,
    table: TokenLanguages,
    language: str,
    english: str,
    top_k: int,
    final_norm: bool,
) -> pd.DataFrame:
    """Summed label counts -> tidy rows (language, layer, category, share, ...)."""
    total = counts.sum(dim=1)
    en = counts[:, table.index(english)]
    categories = {"en": en}
    if language != english:
        categories["target"] = counts[:, table.index(language)]
    categories["other"] = total - sum(categories.values())
    rows = []
    for category, values in categories.items():
        for layer, (value, layer_total) in enumerate(zip(values.tolist(), total.tolist())):
            rows.append(
                {
                    "language": language,
                    "layer": layer,
                    "category": category,
                    "share": value / layer_total if layer_total else float("nan"),
                    "count": value,
                    "n_positions": n_positions,
                    "top_k": top_k,
                    "final_norm": final_norm,
                }
            )
    return pd.DataFrame(rows, columns=list(RATIO_COLUMNS))


def language_ratio(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    table: TokenLanguages,
    language: str,
    english: str = "en",
    top_k: int = 10,
    final_norm: bool = True,
    skip_first_tokens: int = 0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = False,
) -> pd.DataFrame:
    """Per layer, the share of English, of ``language`` and of other tokens among the decoded top-k.

    ``batches`` yields ``(input_ids, attention_mask)`` pairs of ``language``'s
    documents (either padding side). Returns the tidy table of
    :data:`RATIO_COLUMNS`: one row per (layer, category) with ``category`` in
    ``en``/``target``/``other``; ``layer`` is 0-based (the output of layer
    ``i``); ``share`` sums to 1 over the categories of a layer. "other" holds
    tokens of no language *and* of third languages. When ``language`` is
    English itself there is no separate ``target`` row (en + other = 1).
    """
    table.index(english), table.index(language)  # fail early with the known languages
    total: torch.Tensor | None = None
    n_positions = 0
    for input_ids, attention_mask in tqdm(batches, desc=f"logit lens {language}", unit="batch", disable=not progress):
        counts, n = layer_label_counts(
            model, input_ids, attention_mask, table, top_k, final_norm, skip_first_tokens, chunk_bytes
        )
        total = counts if total is None else total + counts
        n_positions += n
    if total is None:
        raise LogitLensError(f"no batches of {language!r} documents to decode")
    if n_positions == 0:
        raise LogitLensError(
            f"no positions of {language!r} documents were decoded (skip_first_tokens={skip_first_tokens} "
            "is at least every document's length)"
        )
    return _ratio_frame(total, n_positions, table, language, english, top_k, final_norm)


def language_ratios(
    model: nn.Module,
    batches_by_language: Mapping[str, Iterable[tuple[torch.Tensor, torch.Tensor]]],
    table: TokenLanguages,
    **kwargs: Any,
) -> pd.DataFrame:
    """:func:`language_ratio` for several languages, concatenated into one tidy table."""
    frames = [
        language_ratio(model, batches, table, language, **kwargs) for language, batches in batches_by_language.items()
    ]
    if not frames:
        raise LogitLensError("batches_by_language is empty")
    return pd.concat(frames, ignore_index=True)


def batches_from_texts(
    tokenizer: Any, texts: Sequence[str], batch_size: int = 8, max_length: int = 512
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(input_ids, attention_mask)`` batches of texts, longest first (little padding).

    Texts are truncated to ``max_length`` tokens; texts that tokenize to
    nothing are skipped (they have no position to decode).
    """
    if batch_size < 1 or max_length < 1:
        raise LogitLensError(f"batch_size={batch_size} and max_length={max_length} must be >= 1")
    encoded = [ids for ids in encode(tokenizer, texts, max_length) if ids]
    for _, input_ids, attention_mask in padded_batches(encoded, batch_size, pad_token_id(tokenizer)):
        yield input_ids, attention_mask
