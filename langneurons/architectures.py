"""The architecture table: where each supported model family keeps its neurons.

A neuron is addressed as ``(layer, site, index)`` with four sites:

- ``ffn``: an intermediate unit of the feed-forward block; its activation is
  the input of the down projection.
- ``attn_q`` / ``attn_k`` / ``attn_v``: one output dimension of the query,
  key or value projection (before any rotary embedding).

Every family is described by one :class:`Architecture` entry of module paths,
so that adding a family means adding one entry (and one tiny test model),
never copying a ``modeling_*.py``. Fused projections (GPT-2's ``c_attn``,
GPT-NeoX's and BLOOM's ``query_key_value``) are split by output column.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

SITES: tuple[str, ...] = ("ffn", "attn_q", "attn_k", "attn_v")
ATTENTION_SITES: tuple[str, ...] = ("attn_q", "attn_k", "attn_v")

#: How a projection module lays out q, k and v in its output columns.
#: ``separate``: one module per site, column = index.
#: ``stacked``: [q | k | v] blocks of the fused output (GPT-2).
#: ``head_interleaved``: per head [q_h | k_h | v_h] (GPT-NeoX, BLOOM).
ProjectionLayout = Literal["separate", "stacked", "head_interleaved"]


class UnsupportedArchitectureError(ValueError):
    """The model's class has no entry in the architecture table."""


class NeuronIndexError(ValueError):
    """A neuron address lies outside the model."""


@dataclass(frozen=True)
class Architecture:
    """Module paths of one model family, relative to the ``*ForCausalLM`` model.

    ``attention_capture`` says how PLND sees the attention probabilities:
    ``interface`` registers a transformers ``AttentionInterface`` function
    (every family whose attention goes through it), ``bloom`` reads BLOOM's
    fused projection and ALiBi bias through hooks.

    ``ffn_act`` (gated families only) is the activation-function module applied
    to the gate projection, ``act(x W_gate)``; LAPE counts a unit as active on a
    token when that output is > 0. Non-gated families have no separate gate, so
    their LAPE activation is the input of ``ffn_out`` (see
    :func:`lape_activation_source`).
    """

    layers: str
    attention: str
    q_proj: str
    k_proj: str
    v_proj: str
    o_proj: str
    ffn_in: str
    ffn_out: str
    final_norm: str
    unembedding: str
    ffn_gate: str | None = None
    ffn_act: str | None = None
    projection_layout: ProjectionLayout = "separate"
    rotary: bool = False
    attention_capture: Literal["interface", "bloom"] = "interface"


_LLAMA_LIKE = Architecture(
    layers="model.layers",
    attention="self_attn",
    q_proj="self_attn.q_proj",
    k_proj="self_attn.k_proj",
    v_proj="self_attn.v_proj",
    o_proj="self_attn.o_proj",
    ffn_in="mlp.up_proj",
    ffn_out="mlp.down_proj",
    final_norm="model.norm",
    unembedding="lm_head",
    ffn_gate="mlp.gate_proj",
    ffn_act="mlp.act_fn",
    rotary=True,
)

ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "Gemma2ForCausalLM": _LLAMA_LIKE,
    "GPT2LMHeadModel": Architecture(
        layers="transformer.h",
        attention="attn",
        q_proj="attn.c_attn",
        k_proj="attn.c_attn",
        v_proj="attn.c_attn",
        o_proj="attn.c_proj",
        ffn_in="mlp.c_fc",
        ffn_out="mlp.c_proj",
        final_norm="transformer.ln_f",
        unembedding="lm_head",
        projection_layout="stacked",
    ),
    "GPTNeoXForCausalLM": Architecture(
        layers="gpt_neox.layers",
        attention="attention",
        q_proj="attention.query_key_value",
        k_proj="attention.query_key_value",
        v_proj="attention.query_key_value",
        o_proj="attention.dense",
        ffn_in="mlp.dense_h_to_4h",
        ffn_out="mlp.dense_4h_to_h",
        final_norm="gpt_neox.final_layer_norm",
        unembedding="lm_head",
        projection_layout="head_interleaved",
        rotary=True,
    ),
    "BloomForCausalLM": Architecture(
        layers="transformer.h",
        attention="self_attention",
        q_proj="self_attention.query_key_value",
        k_proj="self_attention.query_key_value",
        v_proj="self_attention.query_key_value",
        o_proj="self_attention.dense",
        ffn_in="mlp.dense_h_to_4h",
        ffn_out="mlp.dense_4h_to_h",
        final_norm="transformer.ln_f",
        unembedding="lm_head",
        projection_layout="head_interleaved",
        attention_capture="bloom",
    ),
    "OPTForCausalLM": Architecture(
        layers="model.decoder.layers",
        attention="self_attn",
        q_proj="self_attn.q_proj",
        k_proj="self_attn.k_proj",
        v_proj="self_attn.v_proj",
        o_proj="self_attn.out_proj",
        ffn_in="fc1",
        ffn_out="fc2",
        final_norm="model.decoder.final_layer_norm",
        unembedding="lm_head",
    ),
}


def get_architecture(model: nn.Module) -> Architecture:
    """Return the table entry for ``model``'s class, or explain how to add one."""
    name = type(model).__name__
    try:
        return ARCHITECTURES[name]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedArchitectureError(
            f"model class {name!r} is not in langneurons' architecture table. "
            f"Supported classes: {supported}. To add a family, add one Architecture entry "
            f"to langneurons.architectures.ARCHITECTURES (module paths of its layers, q/k/v/o "
            f"projections, FFN in/out, final norm and unembedding) and one tiny test model "
            f"to tests/models.py."
        ) from None


def lape_activation_source(arch: Architecture) -> tuple[str, Literal["output", "input"]]:
    """Where LAPE reads a layer's FFN activation: ``(module path, "output" | "input")``.

    Gated MLPs: the output of the gate's activation function (``ffn_act``).
    Non-gated MLPs: the input of the down projection (``ffn_out``), which is
    ``act(x W_in)`` there.
    """
    if arch.ffn_gate is not None:
        if arch.ffn_act is None:
            raise UnsupportedArchitectureError(
                "this gated family has no ffn_act entry (the activation-function module applied to the gate "
                "projection, e.g. 'mlp.act_fn'); add it to its Architecture entry to capture LAPE activations"
            )
        return arch.ffn_act, "output"
    return arch.ffn_out, "input"


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


@dataclass(frozen=True)
class Dimensions:
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int

    @property
    def group_size(self) -> int:
        """Query heads that read one key/value head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def site_size(self, site: str) -> int:
        if site == "ffn":
            return self.intermediate_size
        if site == "attn_q":
            return self.n_heads * self.head_dim
        if site in ("attn_k", "attn_v"):
            return self.n_kv_heads * self.head_dim
        raise NeuronIndexError(f"site {site!r} is unknown; use one of {', '.join(SITES)}")


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out_features, in_features]``, whatever the module type.

    GPT-2's ``Conv1D`` stores ``[in, out]``; ``nn.Linear`` stores ``[out, in]``.
    """
    weight = module.weight
    if type(module).__name__ == "Conv1D":
        return weight.t()
    return weight


def dimensions(model: nn.Module) -> Dimensions:
    arch = get_architecture(model)
    config = model.config
    layers = get_submodule(model, arch.layers)
    n_heads = int(config.num_attention_heads)
    n_kv_heads = int(getattr(config, "num_key_value_heads", None) or n_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    ffn_out = get_submodule(layers[0], arch.ffn_out)
    return Dimensions(
        n_layers=len(layers),
        hidden_size=int(config.hidden_size),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=int(head_dim),
        intermediate_size=int(weight_out_in(ffn_out).shape[1]),
    )


def site_sizes(model: nn.Module) -> dict[str, int]:
    """Number of neurons per layer for each site."""
    dims = dimensions(model)
    return {site: dims.site_size(site) for site in SITES}


def input_device(model: nn.Module) -> torch.device:
    """Where inputs must go: the device of the input embeddings (also under ``device_map``)."""
    device = model.get_input_embeddings().weight.device
    return torch.device("cpu") if device.type == "meta" else device


def check_batch(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, error: type[Exception] = ValueError
) -> None:
    """A padded batch: ``[batch, tokens]`` ids and mask of one shape, and no document without tokens."""
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise error(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be "
            "[batch, tokens]"
        )
    empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise error(f"documents {empty} of the batch have no tokens (attention_mask is all zero); drop them")


def forward_inputs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, last_logit_only: bool = False, **extra
) -> dict[str, Any]:
    """Keyword arguments for ``model(**...)`` on a padded batch, on the input device.

    Positions are counted from each document's first token, so the scores and
    logits do not depend on the padding side. ``last_logit_only`` asks for the
    logits of the last position only, for callers that read hidden states or
    hooks instead.
    """
    device = input_device(model)
    inputs: dict[str, Any] = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    accepted = inspect.signature(model.forward).parameters
    if "use_cache" in accepted:
        inputs["use_cache"] = False
    if "position_ids" in accepted:
        inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0).to(device)
    if last_logit_only and "logits_to_keep" in accepted:
        inputs["logits_to_keep"] = 1
    return inputs | extra


def projection_path(arch: Architecture, site: str) -> str:
    return {"attn_q": arch.q_proj, "attn_k": arch.k_proj, "attn_v": arch.v_proj}[site]


def projection_columns(arch: Architecture, dims: Dimensions, site: str, index: torch.Tensor) -> torch.Tensor:
    """Map site indices to output columns of the (possibly fused) projection module."""
    slot = ATTENTION_SITES.index(site)
    if arch.projection_layout == "separate":
        return index
    if arch.projection_layout == "stacked":
        return index + slot * dims.n_heads * dims.head_dim
    # head_interleaved: the output is viewed as [heads, 3 * head_dim] = per head [q | k | v]
    head, within = index // dims.head_dim, index % dims.head_dim
    return head * 3 * dims.head_dim + slot * dims.head_dim + within


def ffn_down_column_norms(model: nn.Module, layer: int) -> torch.Tensor:
    """||W_down[:, k]|| for every FFN unit k of ``layer``, in float32."""
    arch = get_architecture(model)
    down = get_submodule(get_submodule(model, arch.layers)[layer], arch.ffn_out)
    return weight_out_in(down).float().norm(dim=0)
