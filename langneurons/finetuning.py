"""Targeted fine-tuning: train only one language's neurons (paper §6.3, issue #6).

The paper's practical payoff is that updating only specific(L), with about 400
documents of language L, improves L without hurting the other languages. A
neuron ``(layer, site, index)`` owns exactly the weights that deactivating it
zeroes (see :func:`langneurons.interventions.zero_weights_`):

- ``ffn``: row k of the up (and gate) projection, entry k of their biases, and
  column k of the down projection;
- ``attn_q`` / ``attn_k`` / ``attn_v``: row k (and bias entry k) of the query,
  key or value projection; fused projections (GPT-2 ``c_attn``, Phi-3 ``qkv_proj``
  and ``gate_up_proj``, GPT-NeoX and BLOOM ``query_key_value``) by output row via
  :func:`langneurons.architectures.projection_columns` and
  :func:`~langneurons.architectures.ffn_input_rows`. Key/value indices are
  kv-dimensions, so grouped-query attention needs no special case.

How the update stays inside the mask, exactly (bit-identical outside it):

1. Only the parameters that hold neuron slices get ``requires_grad``; every
   other parameter is frozen and never reaches the optimiser.
2. The optimiser (``torch.optim.AdamW``) never sees the parameters: it trains
   master copies of the neuron slices alone, in float32 (float64 stays
   float64). After each backward pass the slices of the parameters'
   gradients are copied into the masters' gradients; after each step the
   masters are written back into the slices, rounded to the model's dtype.
   Nothing else of a parameter is ever written, so every entry outside the
   slices keeps its bits.
3. Decoupled weight decay is AdamW's own, on the masters: it shrinks the
   neuron slices only, with the scheduled learning rate of each step.
4. In bf16/fp16 a step smaller than half the spacing of representable values
   would round away if applied to the weights; the masters accumulate such
   steps until the rounded value moves. The optimiser holds three float32
   numbers per trained entry (master, two moments), for the slices only, not
   for the whole matrices that hold them; the parameters' own gradients (in
   the model's dtype) live from the backward pass until they are gathered.

Gradient clipping acts on the slices' gradients, and a non-finite norm stops
training with an error. Full fine-tuning and LoRA train the same way, with a
master for each trained parameter that is stored below float32 (the parameter
itself otherwise).

Baselines, all with the same documents, order and token budget: a random
neuron subset of the same size per (layer, site)
(:meth:`langneurons.neuronset.NeuronSet.random_control`),
full fine-tuning, LoRA through ``peft`` on the same projection modules, and no
fine-tuning. Evaluation lives in ``langneurons.evaluation``; this module only
trains and saves artefacts:

- targeted / random: a sparse safetensors file with only the changed rows or
  columns and their indices (:func:`save_sparse_delta`,
  :func:`apply_sparse_delta`);
- full: the whole model via ``save_pretrained``;
- LoRA: the peft adapter via ``save_pretrained``;
- every method: ``record.json`` (method, target language, trainable
  parameters, documents, tokens, steps, wall time, final loss, provenance).

Every training function changes the model it is given in place: pass a fresh
copy of the base model to each method.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from langneurons.architectures import (
    SITES,
    dimensions,
    ffn_input_rows,
    get_architecture,
    get_submodule,
    input_device,
    projection_columns,
    projection_path,
    stored_axis,
)
from langneurons.batching import encode, pad, pad_token_id
from langneurons.interventions import group_neurons
from langneurons.io import atomic_dir, atomic_path, provenance, read_safetensors, write_json_atomic
from langneurons.neuronset import NeuronSet, NeuronSetError, NeuronSpace

__all__ = [
    "METHODS",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "ParameterSlice",
    "TrainingRecord",
    "apply_sparse_delta",
    "finetune",
    "finetune_full",
    "finetune_lora",
    "finetune_neurons",
    "load_sparse_delta",
    "lora_target_modules",
    "neuron_parameter_slices",
    "no_finetune",
    "save_result",
    "save_sparse_delta",
    "select_documents",
    "tokenize_documents",
]

Method = Literal["targeted", "random", "full", "lora", "none"]
METHODS: tuple[str, ...] = ("targeted", "random", "full", "lora", "none")
SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")
SPARSE_DELTA_FORMAT = "langneurons.sparse_delta"
SPARSE_DELTA_VERSION = "1"

Documents = Sequence[str] | Sequence[Sequence[int]] | Sequence[torch.Tensor]


class FinetuneError(ValueError):
    """Bad fine-tuning input (config, documents, neurons, delta file) or a diverged run."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings shared by every method, so that baselines see the same budget.

    Defaults follow the released setup (lr 2e-6, 1 epoch, batch 8 x 4
    accumulation, cosine schedule, 400 documents). On small models the
    learning rate needs a sweep (see docs/feasibility.md).
    """

    lr: float = 2e-6
    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 4
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.0
    max_length: int = 512
    weight_decay: float = 0.0
    seed: int = 0
    max_steps: int | None = None
    n_docs: int = 400
    max_grad_norm: float | None = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.lr > 0 and math.isfinite(self.lr), "lr", "must be a positive finite number; e.g. lr=2e-6"),
            (self.epochs >= 1, "epochs", "must be >= 1; use method='none' for no training"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.grad_accum >= 1, "grad_accum", "must be >= 1 (1 = no accumulation)"),
            (self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)"),
            (self.max_length >= 2, "max_length", "must be >= 2 tokens (a next-token loss needs two)"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps", "must be None or >= 1"),
            (self.n_docs >= 1, "n_docs", "must be >= 1; the paper uses 400"),
            (self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "must be None or > 0"),
            (all(0 <= b < 1 for b in self.adam_betas), "adam_betas", "must both be in [0, 1)"),
            (self.adam_eps > 0, "adam_eps", "must be > 0 (it keeps masked-out updates at exactly 0/eps)"),
            (self.lora_rank >= 1, "lora_rank", "must be >= 1"),
            (self.lora_alpha > 0, "lora_alpha", "must be > 0"),
            (0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)"),
        ]
        for ok, name, fix in checks:
            if not ok:
                raise FinetuneError(f"FinetuneConfig.{name}={getattr(self, name)!r} is invalid: it {fix}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- records


@dataclass
class TrainingRecord:
    """What one fine-tuning run did; saved as ``record.json`` beside the artefact."""

    method: str
    target_language: str | None
    base_model: str
    trainable_params: int
    n_docs: int
    tokens: int
    steps: int
    wall_s: float
    final_loss: float | None
    losses: list[float] = field(default_factory=list)
    n_neurons: int | None = None
    neurons_per_site: dict[str, int] | None = None
    control_seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ParameterSlice:
    """The entries of one parameter that belong to the selected neurons.

    ``dim`` is the axis of the parameter *as stored* (a family whose table
    entry says ``weight_layout="in_out"``, GPT-2, stores ``[in, out]``, so a
    neuron's output row is its dim-1 slice); ``index`` are
    the sorted unique positions along it; ``initial`` are the base values of
    those slices, kept to save only what changed.
    """

    name: str
    dim: int
    index: torch.Tensor
    initial: torch.Tensor

    @property
    def n_entries(self) -> int:
        return int(self.initial.numel())


@dataclass
class FinetuneResult:
    """The fine-tuned model (a ``PeftModel`` for LoRA), its record and what to save."""

    model: nn.Module
    record: TrainingRecord
    slices: dict[str, ParameterSlice] | None = None
    neurons: NeuronSet | None = None


# --------------------------------------------------------------------------- neurons


def _neuron_set(model: nn.Module, neurons: Any) -> NeuronSet:
    """Neurons as one set checked against ``model``, refusing empty sets and sets of several languages or kinds."""
    try:
        neuron_set = NeuronSet.coerce(neurons, NeuronSpace.of(model))
    except NeuronSetError as error:
        raise FinetuneError(f"neurons: {error}") from error
    if len(neuron_set) == 0:
        raise FinetuneError(
            "neurons: the neuron set is empty, so nothing would be trained; pass a non-empty set "
            "(filter the neuron table to one language and set_kind that has neurons) or use method='none'"
        )
    for column, values in (("language", neuron_set.languages), ("set_kind", neuron_set.set_kinds)):
        if len(values) > 1:
            raise FinetuneError(
                f"neurons: the table mixes {column}s {values}; filter it to one language and one set_kind before "
                "fine-tuning (neuron_set.select(language=..., set_kind=...))"
            )
    return neuron_set


def _neuron_entries(
    model: nn.Module, groups: Mapping[tuple[int, str], torch.Tensor]
) -> list[tuple[str, int, torch.Tensor]]:
    """(parameter name, stored axis, positions) for every weight/bias slice the neurons own."""
    arch = get_architecture(model)
    dims = dimensions(model)
    entries: list[tuple[str, int, torch.Tensor]] = []

    def add(subpath: str, layer: int, out_in_axis: int, index: torch.Tensor, bias: bool) -> None:
        path = f"{arch.layers}.{layer}.{subpath}"
        module = get_submodule(model, path)
        entries.append((f"{path}.weight", stored_axis(arch, out_in_axis), index))
        if bias and getattr(module, "bias", None) is not None:
            entries.append((f"{path}.bias", 0, index))

    for (layer, site), index in groups.items():
        if site == "ffn":
            for path, rows in ffn_input_rows(arch, dims, index):
                add(path, layer, 0, rows, bias=True)
            add(arch.ffn_out, layer, 1, index, bias=False)  # the down bias is per hidden dim, not per unit
        else:
            add(projection_path(arch, site), layer, 0, projection_columns(arch, dims, site, index), bias=True)
    return entries


def neuron_parameter_slices(model: nn.Module, neurons: Any) -> dict[str, ParameterSlice]:
    """Map the neurons to the parameter slices they own, merged per parameter.

    Fused q/k/v projections receive slices from several sites; they are merged
    into one sorted index per parameter.
    """
    params = dict(model.named_parameters())
    merged: dict[str, tuple[int, list[torch.Tensor]]] = {}
    for name, dim, index in _neuron_entries(model, group_neurons(model, _neuron_set(model, neurons))):
        if name not in params:
            raise FinetuneError(f"parameter {name!r} from the architecture table is not in the model")
        merged.setdefault(name, (dim, []))[1].append(index)
    slices = {}
    for name, (dim, parts) in merged.items():
        index = torch.unique(torch.cat(parts)).to(params[name].device)
        initial = params[name].detach().index_select(dim, index).clone()
        slices[name] = ParameterSlice(name=name, dim=dim, index=index, initial=initial)
    return slices


# --------------------------------------------------------------------------- documents


def select_documents(texts: Sequence[Any], n_docs: int) -> list[Any]:
    """The first ``n_docs`` documents of the language's ``finetune`` split.

    Taking a prefix (the split is already a seeded draw) gives every method the
    same documents. Too few documents is an error, not a silent shortfall.
    """
    texts = list(texts)
    if len(texts) < n_docs:
        raise FinetuneError(
            f"documents: {len(texts)} given but FinetuneConfig.n_docs={n_docs}; "
            f"lower n_docs or enlarge the finetune split"
        )
    return texts[:n_docs]


def tokenize_documents(texts: Sequence[str], tokenizer: Any, max_length: int) -> list[torch.Tensor]:
    """Token ids per document, truncated to ``max_length`` (special tokens as the tokenizer adds them)."""
    return [torch.tensor(ids, dtype=torch.long) for ids in encode(tokenizer, texts, max_length)]


def _prepare_documents(documents: Documents, config: FinetuneConfig, tokenizer: Any) -> list[torch.Tensor]:
    chosen = select_documents(documents, config.n_docs)
    if chosen and isinstance(chosen[0], str):
        if tokenizer is None:
            raise FinetuneError("documents: texts were given without a tokenizer; pass tokenizer= or token ids")
        tokens = tokenize_documents(chosen, tokenizer, config.max_length)
    else:
        tokens = [torch.as_tensor(doc, dtype=torch.long).flatten()[: config.max_length] for doc in chosen]
    short = sum(int(t.numel() < 2) for t in tokens)
    if short:
        raise FinetuneError(
            f"documents: {short} of {len(tokens)} documents have fewer than 2 tokens (no next-token target); "
            f"filter empty documents out of the finetune split"
        )
    return tokens


# --------------------------------------------------------------------------- training loop


@dataclass
class _TrainStats:
    tokens: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)


def _planned_steps(n_docs: int, config: FinetuneConfig) -> int:
    micro_batches = math.ceil(n_docs / config.batch_size)
    total = config.epochs * math.ceil(micro_batches / config.grad_accum)
    return min(total, config.max_steps) if config.max_steps is not None else total


def _windows(n_docs: int, config: FinetuneConfig, epoch: int) -> Iterator[list[list[int]]]:
    """Optimiser steps of one epoch, each a list of micro-batches of document positions."""
    order = torch.randperm(n_docs, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)).tolist()
    micro = [order[i : i + config.batch_size] for i in range(0, n_docs, config.batch_size)]
    for i in range(0, len(micro), config.grad_accum):
        yield micro[i : i + config.grad_accum]


def _loss_sum(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over the non-padding targets.

    Summing (and dividing by the tokens of the whole accumulation window)
    makes a step independent of how the window is split into micro-batches.
    """
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 at least; float64 stays float64
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )


@contextmanager
def _training_mode(model: nn.Module, seed: int) -> Iterator[None]:
    """Train mode and a seeded, forked RNG (dropout) for the block; restores both after."""
    was_training = model.training
    device = input_device(model)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model.train()
        try:
            yield
        finally:
            model.train(was_training)


def _scheduler(optimizer: torch.optim.Optimizer, config: FinetuneConfig, total: int):
    from transformers import get_scheduler

    warmup = round(config.warmup_ratio * total)
    name = "constant_with_warmup" if config.schedule == "constant" and warmup else config.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


class _MasterWeights:
    """What the optimiser trains: tensors of at least float32, each a parameter or slices of one.

    ``entries`` are ``(parameter, dim, index)``; ``dim``/``index`` select the
    slices along that axis, ``None`` means the whole parameter. A whole
    parameter of float32 or wider is trained in place (it is its own master).
    """

    def __init__(self, entries: Sequence[tuple[nn.Parameter, int | None, torch.Tensor | None]]) -> None:
        self._entries = []
        for param, dim, index in entries:
            dtype = torch.promote_types(param.dtype, torch.float32)
            if index is None and param.dtype == dtype:
                master = param
            else:
                value = param.detach() if index is None else param.detach().index_select(dim, index)
                master = value.to(dtype, copy=True).requires_grad_(True)
            self._entries.append((param, dim, index, master))

    @classmethod
    def of_slices(cls, params: Mapping[str, nn.Parameter], slices: Mapping[str, ParameterSlice]) -> _MasterWeights:
        return cls([(params[name], s.dim, s.index) for name, s in slices.items()])

    @classmethod
    def whole(cls, params: Sequence[nn.Parameter]) -> _MasterWeights:
        return cls([(param, None, None) for param in params])

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [master for *_, master in self._entries]

    def gather_gradients(self) -> None:
        """Move the (slices of the) parameters' gradients into the masters' gradients."""
        for param, dim, index, master in self._entries:
            if master is param:
                continue
            grad = param.grad
            if grad is not None and index is not None:
                grad = grad.index_select(dim, index)
            master.grad = None if grad is None else grad.to(master.dtype)
            param.grad = None

    def write_back(self) -> None:
        """Copy the masters into the model, rounded to each parameter's dtype."""
        with torch.no_grad():
            for param, dim, index, master in self._entries:
                if master is param:
                    continue
                if index is None:
                    param.copy_(master)
                else:
                    param.index_copy_(dim, index, master.to(param.dtype))


def _train(
    model: nn.Module,
    docs: list[torch.Tensor],
    config: FinetuneConfig,
    *,
    masters: _MasterWeights,
    desc: str,
) -> _TrainStats:
    """The loop every method shares: same documents, order, steps, token budget and optimiser.

    AdamW (with ``config.weight_decay``, decoupled) steps ``masters``; each
    step gathers the gradients into them, clips, steps, and writes them back.
    """
    optimizer = torch.optim.AdamW(
        masters.tensors, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps, weight_decay=config.weight_decay
    )
    total = _planned_steps(len(docs), config)
    scheduler = _scheduler(optimizer, config, total)
    device, pad_id = input_device(model), pad_token_id(getattr(model, "config", None))
    stats = _TrainStats()
    bar = tqdm(total=total, desc=desc, disable=not config.progress, leave=False)
    with _training_mode(model, config.seed):
        for epoch in range(config.epochs):
            for window in _windows(len(docs), config, epoch):
                if stats.steps >= total:
                    break
                batches = [pad([docs[i] for i in micro], pad_id) for micro in window]
                n_targets = sum(int(mask[:, 1:].sum()) for _, mask in batches)
                loss_total = 0.0
                for ids, mask in batches:
                    loss = _loss_sum(model, ids.to(device), mask.to(device)) / n_targets
                    loss.backward()
                    loss_total += float(loss.detach())
                    stats.tokens += int(mask.sum())
                masters.gather_gradients()
                _check_and_clip(masters.tensors, config, stats.steps)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                masters.write_back()
                stats.steps += 1
                stats.losses.append(loss_total)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_total:.4f}")
    bar.close()
    return stats


def _check_and_clip(params: list[torch.Tensor], config: FinetuneConfig, step: int) -> None:
    """Clip the gradient norm of what is trained; refuse a non-finite one (training diverged)."""
    max_norm = config.max_grad_norm if config.max_grad_norm is not None else float("inf")
    norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
    if not torch.isfinite(norm):
        raise FinetuneError(
            f"the gradient norm became {float(norm)} at step {step}; training diverged. "
            f"Lower FinetuneConfig.lr (now {config.lr}) or use float32"
        )


def _base_model_id(model: nn.Module) -> str:
    return str(
        getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    )


def _record(
    method: str,
    model: nn.Module,
    docs: list[torch.Tensor],
    config: FinetuneConfig,
    stats: _TrainStats,
    wall_s: float,
    trainable: int,
    target_language: str | None,
    base_model: str | None = None,
    **extra: Any,
) -> TrainingRecord:
    return TrainingRecord(
        method=method,
        target_language=target_language,
        base_model=base_model if base_model is not None else _base_model_id(model),
        trainable_params=int(trainable),
        n_docs=len(docs),
        tokens=stats.tokens,
        steps=stats.steps,
        wall_s=round(wall_s, 3),
        final_loss=stats.losses[-1] if stats.losses else None,
        losses=stats.losses,
        config=config.to_dict(),
        **extra,
    )


# --------------------------------------------------------------------------- methods


@contextmanager
def _only_slices_trainable(model: nn.Module, slices: Mapping[str, ParameterSlice]) -> Iterator[dict[str, nn.Parameter]]:
    """Freeze every parameter without neuron slices (no gradient is computed for it); undo on exit."""
    params = dict(model.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    try:
        for name, param in params.items():
            param.requires_grad_(name in slices)
        yield {name: params[name] for name in slices}
    finally:
        for name, param in params.items():
            param.requires_grad_(flags[name])
            param.grad = None


def finetune_neurons(
    model: nn.Module,
    documents: Documents,
    neurons: Any,
    config: FinetuneConfig,
    *,
    method: str = "targeted",
    target_language: str | None = None,
    tokenizer: Any = None,
    control_seed: int | None = None,
) -> FinetuneResult:
    """Fine-tune only the weights owned by ``neurons`` (in place); all else stays bit-identical.

    ``neurons``: a :class:`~langneurons.neuronset.NeuronSet` (or a table, or
    ``(layer, site, index)`` tuples) of one language and set kind. ``method``
    only labels the record (``targeted`` for specific(L), ``random`` for a
    :meth:`~langneurons.neuronset.NeuronSet.random_control` set).
    """
    neuron_set = _neuron_set(model, neurons)
    slices = neuron_parameter_slices(model, neuron_set)
    docs = _prepare_documents(documents, config, tokenizer)
    start = time.perf_counter()
    with _only_slices_trainable(model, slices) as params:
        masters = _MasterWeights.of_slices(params, slices)
        stats = _train(model, docs, config, masters=masters, desc=f"finetune[{method}]")
    per_site = neuron_set.table.groupby("site").size().to_dict()
    record = _record(
        method,
        model,
        docs,
        config,
        stats,
        time.perf_counter() - start,
        trainable=sum(s.n_entries for s in slices.values()),
        target_language=target_language,
        n_neurons=len(neuron_set),
        neurons_per_site={str(k): int(v) for k, v in per_site.items()},
        control_seed=control_seed,
    )
    return FinetuneResult(model=model, record=record, slices=slices, neurons=neuron_set)


def finetune_full(
    model: nn.Module,
    documents: Documents,
    config: FinetuneConfig,
    *,
    target_language: str | None = None,
    tokenizer: Any = None,
) -> FinetuneResult:
    """Baseline: every parameter trains (AdamW's own decoupled decay on all of them)."""
    docs = _prepare_documents(documents, config, tokenizer)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    params = list(model.parameters())
    start = time.perf_counter()
    try:
        for param in params:
            param.requires_grad_(True)
        stats = _train(model, docs, config, masters=_MasterWeights.whole(params), desc="finetune[full]")
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])
            param.grad = None
    record = _record(
        "full",
        model,
        docs,
        config,
        stats,
        time.perf_counter() - start,
        trainable=sum(p.numel() for p in params),
        target_language=target_language,
    )
    return FinetuneResult(model=model, record=record)


def lora_target_modules(model: nn.Module, sites: Sequence[str] = SITES) -> list[str]:
    """The projection modules holding ``sites``, as layer-relative paths peft matches by suffix.

    Layer-relative paths (``mlp.c_proj``, not ``c_proj``) keep GPT-2's
    attention output projection, also named ``c_proj``, out of the targets.
    """
    arch = get_architecture(model)
    dims = dimensions(model)
    targets: list[str] = []
    for site in sites:
        if site == "ffn":
            paths = [path for path, _ in ffn_input_rows(arch, dims, torch.zeros(0, dtype=torch.long))]
            paths.append(arch.ffn_out)
        elif site in SITES:
            paths = [projection_path(arch, site)]
        else:
            raise FinetuneError(f"sites: {site!r} is unknown; use some of {', '.join(SITES)}")
        targets.extend(p for p in paths if p is not None and p not in targets)
    return targets


def finetune_lora(
    model: nn.Module,
    documents: Documents,
    config: FinetuneConfig,
    *,
    sites: Sequence[str] = SITES,
    target_language: str | None = None,
    tokenizer: Any = None,
) -> FinetuneResult:
    """Baseline: LoRA (rank ``config.lora_rank``) on the projection modules of ``sites``.

    Returns the ``PeftModel`` (unmerged); ``merge_and_unload()`` gives a plain model.
    """
    from peft import LoraConfig, get_peft_model

    targets = lora_target_modules(model, sites)
    lora_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        fan_in_fan_out=get_architecture(model).weight_layout == "in_out",
        bias="none",
        task_type="CAUSAL_LM",
    )
    docs = _prepare_documents(documents, config, tokenizer)
    base_model = _base_model_id(model)
    was_training = model.training
    peft_model = get_peft_model(model, lora_config)
    peft_model.train(was_training)  # a new wrapper says "training"; keep the base model's mode (dropout)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    start = time.perf_counter()
    stats = _train(peft_model, docs, config, masters=_MasterWeights.whole(params), desc="finetune[lora]")
    for param in params:
        param.grad = None
    record = _record(
        "lora",
        peft_model,
        docs,
        config,
        stats,
        time.perf_counter() - start,
        trainable=sum(p.numel() for p in params),
        target_language=target_language,
        base_model=base_model,
    )
    return FinetuneResult(model=peft_model, record=record)


def no_finetune(
    model: nn.Module,
    documents: Documents,
    config: FinetuneConfig,
    *,
    target_language: str | None = None,
    tokenizer: Any = None,
) -> FinetuneResult:
    """Baseline: the base model unchanged, with a record of the documents it would have seen."""
    docs = _prepare_documents(documents, config, tokenizer)
    record = _record("none", model, docs, config, _TrainStats(), 0.0, trainable=0, target_language=target_language)
    return FinetuneResult(model=model, record=record)


def finetune(
    model: nn.Module,
    documents: Documents,
    config: FinetuneConfig,
    *,
    method: Method,
    neurons: Any = None,
    target_language: str | None = None,
    tokenizer: Any = None,
    control_seed: int = 0,
) -> FinetuneResult:
    """Run one method on ``model`` (in place).

    ``targeted`` trains ``neurons``; ``random`` trains the random control
    (:meth:`~langneurons.neuronset.NeuronSet.random_control`) of ``neurons``
    drawn with ``control_seed`` (the data order still follows ``config.seed``,
    so controls with different seeds see identical batches);
    ``lora`` targets the modules of the sites present in ``neurons`` (all
    sites when none are given).
    """
    if method not in METHODS:
        raise FinetuneError(f"method={method!r} is unknown; use one of {', '.join(METHODS)}")
    kwargs = dict(target_language=target_language, tokenizer=tokenizer)
    if method in ("targeted", "random"):
        if neurons is None:
            raise FinetuneError(f"neurons: method={method!r} needs the target neuron set (neurons=...)")
        if method == "random":
            try:
                neurons = _neuron_set(model, neurons).random_control(control_seed, set_kind="random", seed_column=None)
            except NeuronSetError as error:
                raise FinetuneError(f"neurons: {error}") from error
            return finetune_neurons(
                model, documents, neurons, config, method=method, control_seed=control_seed, **kwargs
            )
        return finetune_neurons(model, documents, neurons, config, method=method, **kwargs)
    if method == "full":
        return finetune_full(model, documents, config, **kwargs)
    if method == "lora":
        sites = SITES if neurons is None else sorted(set(_neuron_set(model, neurons).table["site"]), key=SITES.index)
        return finetune_lora(model, documents, config, sites=sites, **kwargs)
    return no_finetune(model, documents, config, **kwargs)


# --------------------------------------------------------------------------- sparse delta


def _changed_positions(param: torch.Tensor, s: ParameterSlice) -> torch.Tensor:
    """Positions of the slice whose values differ from the base in any bit (NaN == NaN, -0.0 != 0.0)."""
    current = param.detach().index_select(s.dim, s.index)

    def as_bytes(values: torch.Tensor) -> torch.Tensor:
        return values.contiguous().view(torch.uint8).reshape(*values.shape, values.element_size())

    differs = as_bytes(current) != as_bytes(s.initial)
    other = tuple(d for d in range(differs.dim()) if d != s.dim)
    return s.index[differs.any(dim=other).to(s.index.device)]


def save_sparse_delta(
    model: nn.Module, slices: Mapping[str, ParameterSlice], path: str | Path, *, metadata: Mapping[str, Any]
) -> Path:
    """Save only the changed neuron rows/columns with their positions, atomically.

    Tensors per parameter, in its stored layout: ``{name}.rows`` (positions
    along dim 0) or ``{name}.columns`` (dim 1) as int64, and ``{name}.values``
    (the fine-tuned slices, replaced rather than added, so applying is exact).
    Safetensors metadata holds the format, base model id, method and the
    training record as JSON.
    """
    from safetensors.torch import save_file

    params = dict(model.named_parameters())
    tensors: dict[str, torch.Tensor] = {}
    for name, s in slices.items():
        index = _changed_positions(params[name], s)
        if index.numel() == 0:
            continue
        key = "rows" if s.dim == 0 else "columns"
        tensors[f"{name}.{key}"] = index.detach().cpu().to(torch.int64).contiguous()
        tensors[f"{name}.values"] = params[name].detach().index_select(s.dim, index).cpu().contiguous()
    header = {"format": SPARSE_DELTA_FORMAT, "format_version": SPARSE_DELTA_VERSION}
    header.update(
        {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in metadata.items()}
    )
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return Path(path)


def load_sparse_delta(path: str | Path) -> tuple[dict[str, tuple[int, torch.Tensor, torch.Tensor]], dict[str, str]]:
    """Read a sparse delta: ``{param: (dim, positions, values)}`` and the metadata."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != SPARSE_DELTA_FORMAT:
        raise FinetuneError(f"{path}: not a langneurons sparse delta (format={metadata.get('format')!r})")
    delta: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        for suffix, dim in ((".rows", 0), (".columns", 1)):
            if key.endswith(suffix):
                name = key[: -len(suffix)]
                if f"{name}.values" not in tensors:
                    raise FinetuneError(f"{path}: {key} has no matching {name}.values")
                delta[name] = (dim, tensor, tensors[f"{name}.values"])
    return delta, metadata


def apply_sparse_delta(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Write a saved sparse delta into ``model`` (in place); returns the file's metadata.

    The positions' values are replaced, so a fresh base model becomes
    bit-identical to the fine-tuned one. Shapes and positions are checked
    before anything is written; a different recorded base model only warns,
    since one model can be loaded under several names (hub id, local path).
    """
    delta, metadata = load_sparse_delta(path)
    params = dict(model.named_parameters())
    for name, (dim, index, values) in delta.items():
        if name not in params:
            raise FinetuneError(
                f"{path}: parameter {name!r} is not in the model; was the delta made for another family?"
            )
        shape = list(params[name].shape)
        expected = shape[:dim] + [index.numel()] + shape[dim + 1 :]
        if list(values.shape) != expected or (index.numel() and (index.min() < 0 or index.max() >= shape[dim])):
            raise FinetuneError(
                f"{path}: {name} values {list(values.shape)} at {index.numel()} positions do not fit the "
                f"parameter {shape}; was the delta made for another model size?"
            )
    recorded, current = metadata.get("base_model", ""), _base_model_id(model)
    if recorded and current and recorded != current:
        warnings.warn(f"sparse delta {path} was trained on {recorded!r}, applying it to {current!r}", stacklevel=2)
    with torch.no_grad():
        for name, (dim, index, values) in delta.items():
            param = params[name]
            param.index_copy_(dim, index.to(param.device), values.to(param.device, param.dtype))
    return metadata


# --------------------------------------------------------------------------- saving


def save_result(result: FinetuneResult, out_dir: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Save a run's artefact and ``record.json`` into ``out_dir`` (written atomically).

    - targeted / random: ``delta.safetensors`` (sparse) and ``neurons.parquet``
      (the trained set, so a random control can be audited);
    - full: ``model/`` via ``save_pretrained`` (safetensors);
    - lora: ``adapter/`` via the peft model's ``save_pretrained``;
    - none: only the record.
    """
    record = result.record.to_dict()
    with atomic_dir(out_dir) as tmp:
        if record["method"] in ("targeted", "random"):
            if result.slices is None:
                raise FinetuneError("result has no neuron slices; it did not come from finetune_neurons")
            meta = {k: record[k] for k in ("base_model", "method", "target_language", "n_neurons")}
            save_sparse_delta(
                result.model, result.slices, tmp / "delta.safetensors", metadata={**meta, "record": record}
            )
            if result.neurons is not None:
                result.neurons.to_parquet(tmp / "neurons.parquet")
        elif record["method"] == "full":
            result.model.save_pretrained(tmp / "model")
        elif record["method"] == "lora":
            result.model.save_pretrained(tmp / "adapter")
        write_json_atomic(provenance(record["config"], record=record, **dict(extra or {})), tmp / "record.json")
    return Path(out_dir)
