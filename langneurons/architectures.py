"""The architecture table: where each supported model family keeps its neurons.

A neuron is addressed as ``(layer, site, index)`` with four sites:

- ``ffn``: an intermediate unit of the feed-forward block; its activation is
  the input of the down projection.
- ``attn_q`` / ``attn_k`` / ``attn_v``: one output dimension of the query,
  key or value projection (before any rotary embedding).

Every family is described by one :class:`Architecture` entry of module paths,
so that adding a family means adding one entry (and one tiny test model),
never copying a ``modeling_*.py``. Fused projections (GPT-2's and Phi-3's
``c_attn``/``qkv_proj``, GPT-NeoX's and BLOOM's ``query_key_value``, Phi-3's
``gate_up_proj``) are split by output row. The table is the only place that
names model internals: other modules ask it for paths and layouts.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

# The sites and the address error live in torch-free modules (neuron sets are read without torch);
# the table's users import them from here too.
from langneurons.errors import NeuronIndexError
from langneurons.neuronset import ATTENTION_SITES, SITES

#: How a projection module lays out q, k and v in its output rows.
#: ``separate``: one module per site, row = index.
#: ``stacked``: [q | k | v] blocks of the fused output, of n_heads, n_kv_heads and
#: n_kv_heads times head_dim rows (GPT-2, Phi-3 with grouped-query attention).
#: ``head_interleaved``: per head [q_h | k_h | v_h] (GPT-NeoX, BLOOM).
ProjectionLayout = Literal["separate", "stacked", "head_interleaved"]
#: How the FFN's input projections are laid out.
#: ``separate``: ``ffn_in`` (and ``ffn_gate``) have one row per unit.
#: ``gate_up``: ``ffn_in`` is fused [gate | up], unit k owns rows k and intermediate_size + k (Phi-3).
FfnLayout = Literal["separate", "gate_up"]
#: How the layers' projection modules store their weight: ``out_in`` (``nn.Linear``) or ``in_out``
#: (GPT-2's ``Conv1D``).
WeightLayout = Literal["out_in", "in_out"]
#: What a query/key norm normalises: each head's vector (``head``: Gemma-3, Qwen3) or the whole
#: projection output across heads (``projection``: OLMo-2).
QkNormScope = Literal["head", "projection"]


class UnsupportedArchitectureError(ValueError):
    """The model's class has no entry in the architecture table."""


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

    ``backbone`` is the decoder stack whose ``last_hidden_state`` the
    unembedding reads; PLND scoring runs only it. ``q_norm``/``k_norm`` are the
    norms applied to the query/key projection outputs before RoPE, with
    ``qk_norm_scope`` saying over what they normalise. ``post_norm_projection``
    is a projection between the final norm and the unembedding (OPT-350m's
    ``project_out``); the module may be absent (``None``) in a given checkpoint,
    as may the final norm of post-LN models.
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
    backbone: str = "model"
    projection_layout: ProjectionLayout = "separate"
    ffn_layout: FfnLayout = "separate"
    weight_layout: WeightLayout = "out_in"
    rotary: bool = False
    attention_capture: Literal["interface", "bloom"] = "interface"
    q_norm: str | None = None
    k_norm: str | None = None
    qk_norm_scope: QkNormScope | None = None
    post_norm_projection: str | None = None

    def __post_init__(self) -> None:
        if (self.q_norm is None) != (self.k_norm is None) or (self.q_norm is None) != (self.qk_norm_scope is None):
            raise ValueError("an Architecture with query/key norms sets q_norm, k_norm and qk_norm_scope together")
        if self.ffn_layout == "gate_up" and self.ffn_gate is not None:
            raise ValueError("ffn_layout='gate_up' fuses the gate into ffn_in; leave ffn_gate unset")

    @property
    def gated(self) -> bool:
        """Whether the FFN has a gate projection (separate or fused into ``ffn_in``)."""
        return self.ffn_gate is not None or self.ffn_layout == "gate_up"


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

_HEAD_NORMED = replace(_LLAMA_LIKE, q_norm="self_attn.q_norm", k_norm="self_attn.k_norm", qk_norm_scope="head")

ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "Gemma2ForCausalLM": _LLAMA_LIKE,
    "Gemma3ForCausalLM": _HEAD_NORMED,
    # AutoModelForCausalLM loads a multimodal Gemma-3 checkpoint as this class; only its text part is scored.
    "Gemma3ForConditionalGeneration": replace(
        _HEAD_NORMED, layers="model.language_model.layers", final_norm="model.language_model.norm"
    ),
    "Qwen3ForCausalLM": _HEAD_NORMED,
    "Olmo2ForCausalLM": replace(_HEAD_NORMED, qk_norm_scope="projection"),
    "Phi3ForCausalLM": replace(
        _LLAMA_LIKE,
        q_proj="self_attn.qkv_proj",
        k_proj="self_attn.qkv_proj",
        v_proj="self_attn.qkv_proj",
        projection_layout="stacked",
        ffn_in="mlp.gate_up_proj",
        ffn_gate=None,
        ffn_act="mlp.activation_fn",
        ffn_layout="gate_up",
    ),
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
        backbone="transformer",
        projection_layout="stacked",
        weight_layout="in_out",
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
        backbone="gpt_neox",
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
        backbone="transformer",
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
        post_norm_projection="model.decoder.project_out",
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


def check_supported_config(config: Any, reference: str) -> None:
    """Fail before any weight is loaded when a model's config names only classes the table lacks.

    An unsupported model then fails in seconds, not after a 100 GB download or a minute of
    dequantising a GGUF file.
    """
    names = list(getattr(config, "architectures", None) or [])
    if not names:  # a GGUF's config names only its model type; AutoModelForCausalLM picks the class from it
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        names = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", None), "")]
    names = [name for name in names if name]
    if names and not any(name in ARCHITECTURES for name in names):
        raise UnsupportedArchitectureError(
            f"model {reference!r} is a {names[0]}, which is not in langneurons' architecture table; "
            f"supported: {', '.join(sorted(ARCHITECTURES))}. Add an entry to langneurons.architectures.ARCHITECTURES."
        )


def lape_activation_source(arch: Architecture) -> tuple[str, Literal["output", "input"]]:
    """Where LAPE reads a layer's FFN activation: ``(module path, "output" | "input")``.

    Gated MLPs: the output of the gate's activation function (``ffn_act``).
    Non-gated MLPs: the input of the down projection (``ffn_out``), which is
    ``act(x W_in)`` there.
    """
    if arch.gated:
        if arch.ffn_act is None:
            raise UnsupportedArchitectureError(
                "this gated family has no ffn_act entry (the activation-function module applied to the gate "
                "projection, e.g. 'mlp.act_fn'); add it to its Architecture entry to capture LAPE activations"
            )
        return arch.ffn_act, "output"
    return arch.ffn_out, "input"


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def optional_submodule(root: nn.Module, path: str | None) -> nn.Module | None:
    """The module at ``path``, or ``None`` where the table has no path or the model sets it to ``None``.

    A path whose attribute does not exist at all is a table error and raises.
    """
    if path is None:
        return None
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if not hasattr(parent, name):
        raise AttributeError(f"{type(root).__name__} has no module {path!r}; check its architecture entry")
    return getattr(parent, name)


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack without the unembedding (all that PLND scoring needs)."""
    return get_submodule(model, get_architecture(model).backbone)


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


def weight_out_in(arch: Architecture, module: nn.Module) -> torch.Tensor:
    """A layer projection's weight as ``[out_features, in_features]`` (a view: writes reach the module)."""
    return module.weight.t() if arch.weight_layout == "in_out" else module.weight


def stored_axis(arch: Architecture, out_in_axis: int) -> int:
    """The axis of a layer projection's stored weight for an axis of its ``[out, in]`` view."""
    return 1 - out_in_axis if arch.weight_layout == "in_out" else out_in_axis


def dimensions(model: nn.Module) -> Dimensions:
    arch = get_architecture(model)
    config = model.config.get_text_config()
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
        intermediate_size=int(weight_out_in(arch, ffn_out).shape[1]),
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
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    last_logit_only: bool = False,
    callee: nn.Module | None = None,
    **extra,
) -> dict[str, Any]:
    """Keyword arguments for ``model(**...)`` on a padded batch, on the input device.

    Positions are counted from each document's first token, so the scores and
    logits do not depend on the padding side. ``last_logit_only`` asks for the
    logits of the last position only, for callers that read hidden states or
    hooks instead. ``callee`` is the module that will be called, when it is
    not ``model`` itself (e.g. its :func:`backbone`).
    """
    device = input_device(model)
    inputs: dict[str, Any] = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    accepted = inspect.signature((callee or model).forward).parameters
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
    """Map site indices to output rows of the (possibly fused) projection module."""
    slot = ATTENTION_SITES.index(site)
    if arch.projection_layout == "separate":
        return index
    if arch.projection_layout == "stacked":
        # [q | k | v] with grouped-query sizes: q has n_heads, k and v n_kv_heads heads of head_dim rows
        offset = (0, dims.site_size("attn_q"), dims.site_size("attn_q") + dims.site_size("attn_k"))[slot]
        return index + offset
    # head_interleaved: the output is viewed as [heads, 3 * head_dim] = per head [q | k | v]
    head, within = index // dims.head_dim, index % dims.head_dim
    return head * 3 * dims.head_dim + slot * dims.head_dim + within


def ffn_input_rows(arch: Architecture, dims: Dimensions, index: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``(module path, output rows)`` of every FFN input projection that FFN units ``index`` own."""
    if arch.ffn_layout == "gate_up":
        return [(arch.ffn_in, torch.cat([index, index + dims.intermediate_size]))]
    paths = [arch.ffn_in] if arch.ffn_gate is None else [arch.ffn_gate, arch.ffn_in]
    return [(path, index) for path in paths]


def ffn_up_part(arch: Architecture, dims: Dimensions, output: torch.Tensor) -> torch.Tensor:
    """The up (non-gate) projection ``x W_up`` out of the ``ffn_in`` module's output."""
    return output[..., dims.intermediate_size :] if arch.ffn_layout == "gate_up" else output


def norm_epsilon(norm: nn.Module) -> float:
    """The epsilon of an RMSNorm module (transformers names it ``eps`` or ``variance_epsilon``)."""
    for name in ("eps", "variance_epsilon"):
        value = getattr(norm, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise UnsupportedArchitectureError(
        f"{type(norm).__name__} has no 'eps' or 'variance_epsilon' attribute, so its query/key norm cannot be "
        "inverted; extend langneurons.architectures.norm_epsilon for it"
    )
