"""PLND: the importance of every neuron for every document, in one forward pass.

The paper defines the importance of neuron N of layer i for document c as

    Imp(N | c) = || T_i without N (h) - T_i(h) ||_2

with T_i the sub-layer (FFN or attention) that N belongs to and the norm over
all tokens of the document. :func:`score_batch` computes it for every neuron
of every layer at once, from quantities the forward pass already produces:

- ``ffn``: zeroing unit k removes the outer product a[:, k] W_down[:, k]^T, so
  Imp_k = ||a[:, k]|| * ||W_down[:, k]|| exactly. The FFN output is taken at the
  down projection, before any post-FFN norm (Gemma-2/3 and OLMo-2 sandwich
  norms): the paper's sub-layer is the FFN, and a norm of the whole output vector
  would make a unit's score depend on all the others (docs/method_notes.md).
- ``attn_v``: zeroing value dim (g, d) removes sum_h (P_h v[:, d]) W_o[:, h*D+d]^T
  over the query heads h that read kv head g. Its Frobenius norm is computed
  exactly from two small Gram matrices, so grouped-query attention is exact too.
- ``attn_q`` / ``attn_k``: the paper measures the change of the attention
  probabilities, Imp_k = || softmax(S - Delta_k) - softmax(S) ||, where Delta_k
  is the part of the scores that the zeroed dimension contributed. It needs d_head
  exponentials per attention weight (:mod:`langneurons.attention_change`: a native
  kernel on CPUs, torch chunked under ``chunk_bytes`` elsewhere); ``qk_mode="fast"``
  replaces it by its second-order expansion, a few matrix products.

Query/key norms (Gemma-3, Qwen3: per head; OLMo-2: over the whole projection):
a neuron is a row of the projection, i.e. an input of the norm. Zeroing it
removes its component and rescales the rest of the normalised vector by
alpha = rms(x) / rms(x without x_j), so the scores become alpha_t (S - Delta)
(queries) or beta_s (S - Delta) (keys); computed from the captured pre-norm
projection outputs. A norm over the whole projection rescales every head, so
the other heads' probability changes are added (n_heads more kernel passes).

Rotary embeddings: the default (``method="paper"``) is the *exact pre-RoPE*
form. A neuron is a row of ``q_proj``/``k_proj``, and zeroing that row zeroes
one input dimension of the rotation, which moves the rotated dims k and its
partner k +- rotary_dim/2. That is what :func:`langneurons.deactivate` does
too, so the score measures the intervention that is later applied. The
released research code instead zeroes the post-RoPE dim k; ``method=
"released_code"`` reproduces it for comparison (see below).

``method="released_code"`` (method.md section 3), for comparison only:

- ffn: sum over tokens of |x W_up| (no gate, no W_down);
- attn_q / attn_k: the *squared* change of the attention probabilities after
  zeroing the post-RoPE dim, with Delta = q_k k_k^T not divided by sqrt(d);
  grouped-query heads are mapped correctly (the released code's ``k // 4`` is not
  reproduced); with query/key norms the dim is a coordinate of the normalised,
  rotated vector, and nothing is rescaled;
- attn_v: sum over tokens of |P V| before W_o (summed over the query heads of the
  kv group).

LAPE activation counts (Tang et al. 2024), from the same forward pass: ask
for ``"ffn_active"`` and ``"n_tokens"`` next to (or instead of) the PLND sites.

- ``ffn_active``: ``[batch, n_layers, intermediate_size]`` float32, the number of
  the document's tokens on which the unit's activation is > 0. The activation
  is ``act(x W_gate)`` for gated MLPs (the output of the family's ``ffn_act``
  module) and the input of the down projection, ``act(x W_in)``, for non-gated
  ones (:func:`langneurons.architectures.lape_activation_source`);
- ``n_tokens``: ``[batch]`` int64, the document's (non-padding) token count.

These are counts, not PLND sites: :data:`SITES` stays the four neuron sites.

Only the decoder stack (the table's ``backbone``) runs: scores need no logits.

Every score is accumulated in float32 whatever the model's dtype; padded
tokens contribute nothing on either padding side; per-layer results stay on the
layer's device until the end of the batch, so models dispatched with
``device_map="auto"`` need no per-token host transfer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from accelerate.utils import align_module_device
from torch import nn
from tqdm.auto import tqdm
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from langneurons.architectures import (
    ATTENTION_SITES,
    SITES,
    Architecture,
    Dimensions,
    backbone,
    check_batch,
    dimensions,
    ffn_up_part,
    forward_inputs,
    get_architecture,
    get_submodule,
    input_device,
    lape_activation_source,
    norm_epsilon,
    projection_columns,
    projection_path,
    weight_out_in,
)
from langneurons.attention_change import check_mode, prob_change_sumsq
from langneurons.batching import encode, pad_token_id, padded_batches

Method = Literal["paper", "released_code"]
METHODS: tuple[str, ...] = ("paper", "released_code")
QkMode = Literal["exact", "fast"]
#: Per-document LAPE counts that ``score_batch`` returns when asked, next to the PLND sites.
COUNT_OUTPUTS: tuple[str, ...] = ("ffn_active", "n_tokens")
#: Memory for the q/k probability-change work of one chunk. Small on CPUs, so
#: that a chunk stays in cache; large on accelerators, to amortise launches.
DEFAULT_CHUNK_BYTES = {"cpu": 2 * 2**20, "accelerator": 256 * 2**20}
_IMPLEMENTATION = "langneurons_plnd"
_NEG = torch.finfo(torch.float32).min


class NonFiniteScoreError(FloatingPointError):
    """A score came out NaN or infinite (usually NaN/inf weights or activations)."""


@dataclass
class _Batch:
    """What every layer needs to know about the batch being scored."""

    valid: torch.Tensor  # [B, T] bool, on the CPU
    sites: tuple[str, ...]
    method: str
    chunk_bytes: int
    qk_mode: str
    scores: dict[str, list[torch.Tensor | None]] = field(default_factory=dict)
    _device_cache: dict = field(default_factory=dict)

    def on(self, device: torch.device) -> torch.Tensor:
        """The validity mask on ``device``, moved once per device."""
        if device not in self._device_cache:
            self._device_cache[device] = self.valid.to(device)
        return self._device_cache[device]


@dataclass
class _QkNorm:
    """A layer's query/key norms and the pre-norm projection outputs of the batch being scored."""

    scope: str  # "head" or "projection", as in the architecture table
    eps: dict[str, float]  # per site: attn_q, attn_k
    pre: dict[str, torch.Tensor] = field(default_factory=dict)  # per site: [B, T, size] pre-norm outputs


@dataclass
class _AttentionLayer:
    layer: int
    module: nn.Module
    o_gram: torch.Tensor | None  # [KV, D, G, G] Gram matrices of W_o's columns per kv dim
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    bloom_qkv: torch.Tensor | None = None
    qk_norm: _QkNorm | None = None


_ACTIVE: dict[int, tuple[_AttentionLayer, _Batch, Dimensions]] = {}


def _softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap


def _additive_mask(mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Any transformers attention mask as a float32 additive ``[B, 1|H, T, T]`` bias."""
    if mask is None:
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        return torch.zeros(1, 1, length, length, device=device).masked_fill(~causal, _NEG)
    mask = mask[..., -length:]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=device).masked_fill(~mask, _NEG)
    return mask.float().clamp(min=_NEG)


def _removal_lanes(
    q: torch.Tensor,
    k: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    sites: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rank-2 removal of every query/key dimension, both sites' lanes side by side.

    ``q``/``k``: [B, H, T, D] rotated vectors per query head; ``rope``: cos and sin
    [B, 1, T, rotary dim] or ``None``. Returns ``left``, ``right`` [B, H, T, 2, D * len(sites)]:
    removing the dimension of lane l changes the scores by
    ``Delta[t, s] = left[t, 0, l] right[s, 0, l] + left[t, 1, l] right[s, 1, l]``.

    Zeroing pre-RoPE dim j of a vector x (rotated: R x) removes R e_j x_j, where
    R e_j = cos_j e_j + sign_j sin_j e_partner(j) (rotate_half convention): its
    own part ``x_j cos_j`` on dim j and ``x_j sign_j sin_j`` on its partner
    j +- rotary_dim/2. A query dimension's lanes are therefore (own, other) against
    the keys' (k_j, k_partner), a key dimension's (q_j, q_partner) against (own,
    other). Dims beyond the rotary part are unrotated.

    Scaled rotary embeddings (YaRN, LongRoPE) fold an attention factor m into
    cos and sin, so R = m * rotation and R^T R = m^2 I: x is recovered as
    R^T r / (cos^2 + sin^2), exact for any m.
    """
    batch, n_heads, length, head_dim = q.shape
    shape = (batch, n_heads, length, 2, head_dim * len(sites))
    left, right = q.new_empty(shape), q.new_empty(shape)
    partner = torch.arange(head_dim, device=q.device)
    if rope is not None:
        cos, sin = rope
        rotary_dim = cos.shape[-1]
        half = rotary_dim // 2
        partner[:rotary_dim] = torch.cat([partner[half:rotary_dim], partner[:half]])
        cos_full = cos.new_ones(*cos.shape[:-1], head_dim)
        sin_signed = sin.new_zeros(*sin.shape[:-1], head_dim)
        cos_full[..., :rotary_dim] = cos
        sin_signed[..., :half] = sin[..., :half]
        sin_signed[..., half:rotary_dim] = -sin[..., half:]
        # R^T undoes the rotation up to m^2: m^2 x_j = cos_j r_j + sign_j sin_j r_partner(j)
        gain = cos_full.square() + sin_signed.square()
    for number, site in enumerate(sites):
        lanes = slice(number * head_dim, (number + 1) * head_dim)
        removed, other = (q, k) if site == "attn_q" else (k, q)
        removed_side, other_side = (left, right) if site == "attn_q" else (right, left)
        other_side[..., 0, lanes] = other
        torch.index_select(other, -1, partner, out=other_side[..., 1, lanes])
        if rope is None:
            removed_side[..., 0, lanes] = removed
            removed_side[..., 1, lanes] = 0
            continue
        pre = torch.index_select(removed, -1, partner).mul_(sin_signed).addcmul_(cos_full, removed).div_(gain)
        torch.mul(pre, cos_full, out=removed_side[..., 0, lanes])
        torch.mul(pre, sin_signed, out=removed_side[..., 1, lanes])
    return left, right


def _norm_scales(norm: _QkNorm, site: str, dims: Dimensions) -> torch.Tensor:
    """Per token and pre-norm input j: how an RMSNorm rescales the rest of its vector.

    The norm computes y = g * x / rms(x), rms(x)^2 = mean(x^2) + eps, over
    one head's vector (scope ``head``) or the whole projection output (scope
    ``projection``). Zeroing x_j (a row of the projection) gives
    y' = a_j (y - y_j e_j) with a_j = rms(x) / rms(x - x_j e_j), whatever the
    gain g (Gemma's 1 + w included). Returns a: [B, T, site size], float32.
    """
    pre = norm.pre[site].float()
    batch, n, size = pre.shape
    width = dims.head_dim if norm.scope == "head" else size
    squares = pre.view(batch, n, size // width, width).square()
    total = squares.sum(-1, keepdim=True)
    eps = norm.eps[site]
    ratio = (total / width + eps) / ((total - squares).clamp(min=0) / width + eps)
    return ratio.sqrt().view(batch, n, size)


def _per_query_head(x: torch.Tensor, n_units: int, group: int) -> torch.Tensor:
    """[B, T, units * D] (a site's neurons) -> [B, query heads, T, D]: each unit's lanes for the heads that read it."""
    batch, n, _ = x.shape
    return x.view(batch, n, n_units, -1).transpose(1, 2).repeat_interleave(group, dim=1)


def _qk_sumsq(
    kernel: Callable[..., torch.Tensor],
    sites: Sequence[str],
    left: torch.Tensor,
    right: torch.Tensor,
    scales: dict[str, torch.Tensor],
    norm: _QkNorm | None,
    dims: Dimensions,
) -> dict[str, torch.Tensor]:
    """Squared probability change per document and query or key neuron, ``{site: [B, site size]}``.

    ``kernel`` is :func:`~langneurons.attention_change.prob_change_sumsq` bound to the
    batch's scores; ``left``/``right`` (:func:`_removal_lanes`) remove each of the sites'
    dimensions per query head, all sites in one kernel call. A key neuron changes every
    query head that reads its kv head. ``scales`` ([B, T, site size], see
    :func:`_norm_scales`): a query/key norm rescales the neuron's own head at token t by
    scale[t, j] (row scales for queries, column scales for keys); a norm over the whole
    projection also rescales every other head, whose probabilities then change by the
    scale alone (one more kernel pass per site, over all of the site's neurons).
    """
    group, head_dim = dims.group_size, dims.head_dim
    units = {"attn_q": (dims.n_heads, 1), "attn_k": (dims.n_kv_heads, group)}
    scaled = {}
    for where, site in (("row_scale", "attn_q"), ("column_scale", "attn_k")):
        if site in scales:
            scaled[where] = torch.ones_like(left[..., 0, :])
            number = sites.index(site)
            own = scaled[where][..., number * head_dim : (number + 1) * head_dim]
            own.copy_(_per_query_head(scales[site], *units[site]))
    together = kernel(left, right, **scaled)  # [B, H, lanes of every site]
    batch = together.shape[0]
    results = {}
    for number, site in enumerate(sites):
        n_units, per_unit_group = units[site]
        own = together[..., number * head_dim : (number + 1) * head_dim]  # [B, H, D]
        own = own.reshape(batch, n_units, per_unit_group, head_dim).sum(2)
        if site in scales and norm.scope == "projection":
            own = own + _other_heads(kernel, site, scales[site], n_units, dims)
        results[site] = own.flatten(1)
    return results


def _other_heads(kernel: Callable[..., torch.Tensor], site: str, scale: torch.Tensor, n_units: int, dims: Dimensions):
    """A projection-wide norm: the change of the heads outside each neuron's unit, ``[B, units, D]``."""
    batch, n, size = scale.shape
    where = "row_scale" if site == "attn_q" else "column_scale"
    every_head = scale[:, None].expand(batch, dims.n_heads, n, size)  # neuron (u, j) scales every query head
    rescaled = kernel(None, None, **{where: every_head})  # [B, query heads, units * D]
    per_unit = rescaled.view(batch, n_units, -1, n_units, dims.head_dim).sum(2)  # [B, unit read, unit zeroed, j]
    return per_unit.sum(1) - torch.diagonal(per_unit, dim1=1, dim2=2).permute(0, 2, 1)


def _attention_scores(
    state: _AttentionLayer,
    batch: _Batch,
    dims: Dimensions,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor,
    scaling: float,
    softcap: float | None,
) -> torch.Tensor:
    """Score the attention sites of one layer; return the attention output ``[B, H, T, D]``.

    ``query``: [B, H, T, D] and ``key``/``value``: [B, KV, T, D], after any rotary
    embedding; ``bias``: float32 additive [B, 1|H, T, T] (mask and ALiBi).
    """
    group = dims.group_size
    q = query.float()
    k = key.float().repeat_interleave(group, dim=1)
    raw = torch.matmul(q * scaling, k.transpose(-1, -2))
    probs = _softcap(raw, softcap) + bias
    torch.softmax(probs, dim=-1, out=probs)
    output = torch.matmul(probs.to(query.dtype), value.repeat_interleave(group, dim=1))

    valid = batch.on(q.device)
    released = batch.method == "released_code"
    batch_size, n_heads, _, head_dim = q.shape
    results: dict[str, torch.Tensor] = {}

    if "attn_v" in batch.sites:
        # [B, H, T, D] in float32: the model's own output when it runs in float32
        if output.dtype == torch.float32:
            mixed = output
        else:
            mixed = torch.matmul(probs, value.float().repeat_interleave(group, dim=1))
        kept = mixed * valid[:, None, :, None]
        if released:
            per_head = kept.abs().sum(dim=2)  # [B, H, D]
            results["attn_v"] = per_head.view(batch_size, dims.n_kv_heads, group, head_dim).sum(2).flatten(1)
        else:
            kept = kept.view(batch_size, dims.n_kv_heads, group, -1, head_dim)
            gram_mixed = torch.einsum("bgitd,bgjtd->bgdij", kept, kept)
            sumsq = (gram_mixed * state.o_gram.to(q.device)).sum(dim=(-1, -2))
            results["attn_v"] = sumsq.clamp(min=0).sqrt().flatten(1)

    wanted_qk = tuple(s for s in ("attn_q", "attn_k") if s in batch.sites)
    if wanted_qk:
        delta_scale = 1.0 if released else scaling
        rope = None if released or state.rope is None else tuple(r[:, None] for r in state.rope)
        left, right = _removal_lanes(q, k, rope, wanted_qk)
        norm = None if released else state.qk_norm
        scales = {} if norm is None else {site: _norm_scales(norm, site, dims) for site in wanted_qk}
        kernel = partial(
            prob_change_sumsq, raw, bias, probs, delta_scale=delta_scale, softcap=softcap,
            chunk_bytes=batch.chunk_bytes, mode=batch.qk_mode, rows=valid,
        )  # fmt: skip
        for site, sumsq in _qk_sumsq(kernel, wanted_qk, left, right, scales, norm, dims).items():
            results[site] = sumsq if released else sumsq.sqrt()
        if state.qk_norm is not None:
            state.qk_norm.pre.clear()

    for site, tensor in results.items():
        batch.scores[site][state.layer] = tensor
    return output


def _plnd_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """AttentionInterface function: eager attention that scores the layer on the way."""
    state, batch, dims = _ACTIVE[id(module)]
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    bias = _additive_mask(attention_mask, query.shape[0], key.shape[2], query.device)
    output = _attention_scores(state, batch, dims, query, key, value, bias, scaling, softcap)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(_IMPLEMENTATION, _plnd_attention)
AttentionMaskInterface.register(_IMPLEMENTATION, eager_mask)


@contextmanager
def _attention_implementation(model: nn.Module, name: str) -> Iterator[None]:
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _weight_statistic(arch: Architecture, module: nn.Module, statistic) -> torch.Tensor:
    """A small float32 statistic of a module's ``[out, in]`` weight, computed once per batch.

    Weights that accelerate offloaded (to CPU or disk) exist only during their
    module's own forward, so they are brought to the execution device here.
    """
    with align_module_device(module):
        return statistic(weight_out_in(arch, module).float())


def _column_gram(w: torch.Tensor) -> torch.Tensor:
    """For W_o viewed as [out, KV, G, D]: Gram[g, d, i, j] = <W_o[:, (g,i,d)], W_o[:, (g,j,d)]>."""
    return torch.einsum("ogid,ogjd->gdij", w, w)


def _register_attention_capture(
    stack: ExitStack, model: nn.Module, arch: Architecture, dims: Dimensions, batch: _Batch
) -> None:
    layers = get_submodule(model, arch.layers)
    for index, block in enumerate(layers):
        module = get_submodule(block, arch.attention)
        o_gram = None
        if "attn_v" in batch.sites and batch.method == "paper":
            o_gram = _weight_statistic(
                arch,
                get_submodule(block, arch.o_proj),
                lambda w: _column_gram(w.view(-1, dims.n_kv_heads, dims.group_size, dims.head_dim)),
            )
        state = _AttentionLayer(index, module, o_gram)
        _ACTIVE[id(module)] = (state, batch, dims)
        stack.callback(_ACTIVE.pop, id(module), None)
        if arch.q_norm is not None and batch.method == "paper":
            _register_norm_capture(stack, block, arch, dims, batch, state)
        if arch.attention_capture == "interface":
            if arch.rotary:

                def keep_rope(mod, args, kwargs, state=state):
                    state.rope = tuple(t.float() for t in kwargs["position_embeddings"])

                handle = module.register_forward_pre_hook(keep_rope, with_kwargs=True)
                stack.callback(handle.remove)
        else:
            _register_bloom_capture(stack, module, state, batch, dims)
    if arch.attention_capture == "interface":
        stack.enter_context(_attention_implementation(model, _IMPLEMENTATION))


def _register_norm_capture(
    stack: ExitStack, block: nn.Module, arch: Architecture, dims: Dimensions, batch: _Batch, state: _AttentionLayer
) -> None:
    """Keep the pre-norm query/key projection outputs that the scores' norm rescaling needs."""
    eps = {}
    for site, path in (("attn_q", arch.q_norm), ("attn_k", arch.k_norm)):
        if site not in batch.sites:
            continue
        norm = get_submodule(block, path)
        width = dims.head_dim if arch.qk_norm_scope == "head" else dims.site_size(site)
        if norm.weight.numel() != width:
            raise ValueError(
                f"{path} normalises {norm.weight.numel()} values but qk_norm_scope={arch.qk_norm_scope!r} means "
                f"{width}; fix this family's architecture entry"
            )
        eps[site] = norm_epsilon(norm)
        rows = projection_columns(arch, dims, site, torch.arange(dims.site_size(site)))

        def keep(mod, args, output, site=site, rows=rows):
            state.qk_norm.pre[site] = output.detach().index_select(-1, rows.to(output.device))

        handle = get_submodule(block, projection_path(arch, site)).register_forward_hook(keep)
        stack.callback(handle.remove)
    state.qk_norm = _QkNorm(arch.qk_norm_scope, eps)


def _register_bloom_capture(
    stack: ExitStack, module: nn.Module, state: _AttentionLayer, batch: _Batch, dims: Dimensions
) -> None:
    """BLOOM computes attention inline (ALiBi), so read its pieces through hooks."""

    def keep_qkv(mod, args, output):
        state.bloom_qkv = output

    def score(mod, args, kwargs, output):
        query, key, value = mod._reshape(state.bloom_qkv)
        batch_size, n_heads, length, _ = query.shape
        alibi = kwargs["alibi"].float().view(batch_size, n_heads, 1, -1)[..., -length:]
        bias = _additive_mask(kwargs.get("attention_mask"), batch_size, length, query.device) + alibi
        _attention_scores(state, batch, dims, query, key, value, bias, mod.inv_norm_factor, None)
        state.bloom_qkv = None

    for handle in (
        module.query_key_value.register_forward_hook(keep_qkv),
        module.register_forward_hook(score, with_kwargs=True),
    ):
        stack.callback(handle.remove)


def _register_ffn_capture(
    stack: ExitStack, model: nn.Module, arch: Architecture, dims: Dimensions, batch: _Batch
) -> None:
    layers = get_submodule(model, arch.layers)
    for index, block in enumerate(layers):
        if batch.method == "released_code":
            up = get_submodule(block, arch.ffn_in)

            def score_up(mod, args, output, layer=index):
                valid = batch.on(output.device)
                projected = ffn_up_part(arch, dims, output.float().reshape(*valid.shape, -1))  # OPT flattens tokens
                batch.scores["ffn"][layer] = (projected.abs() * valid[..., None]).sum(dim=1)

            handle = up.register_forward_hook(score_up)
        else:
            down = get_submodule(block, arch.ffn_out)
            column_norms = _weight_statistic(arch, down, lambda w: w.norm(dim=0))

            def score_down(mod, args, layer=index, column_norms=column_norms):
                valid = batch.on(args[0].device)
                activation = args[0].float().reshape(*valid.shape, -1)  # OPT flattens tokens
                norms = (activation * valid[..., None]).square().sum(dim=1).sqrt()
                batch.scores["ffn"][layer] = norms * column_norms.to(activation.device)

            handle = down.register_forward_pre_hook(score_down)
        stack.callback(handle.remove)


def _register_active_capture(stack: ExitStack, model: nn.Module, arch: Architecture, batch: _Batch) -> None:
    """Count, per document and FFN unit, the valid tokens whose LAPE activation is > 0."""
    path, where = lape_activation_source(arch)
    seen: set[int] = set()
    for index, block in enumerate(get_submodule(model, arch.layers)):
        module = get_submodule(block, path)
        if id(module) in seen:
            raise ValueError(
                f"the module at {path!r} is shared between layers, so its hook cannot tell layers apart; "
                "give every layer its own activation module to capture LAPE activations"
            )
        seen.add(id(module))

        def count(activation: torch.Tensor, layer: int) -> None:
            valid = batch.on(activation.device)
            active = (activation.reshape(*valid.shape, -1) > 0) & valid[..., None]  # OPT flattens tokens
            batch.scores["ffn_active"][layer] = active.sum(dim=1).float()

        if where == "output":
            handle = module.register_forward_hook(lambda mod, args, output, layer=index: count(output, layer))
        else:
            handle = module.register_forward_pre_hook(lambda mod, args, layer=index: count(args[0], layer))
        stack.callback(handle.remove)


def _validate(
    sites: Sequence[str], method: str, qk_mode: str, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> None:
    unknown = [s for s in sites if s not in SITES + COUNT_OUTPUTS]
    if unknown or not sites:
        raise ValueError(
            f"sites={list(sites)!r}: choose one or more of {', '.join(SITES)} "
            f"(and optionally the LAPE counts {', '.join(COUNT_OUTPUTS)})"
        )
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; use 'paper' (the default) or 'released_code'")
    check_mode(qk_mode)
    check_batch(input_ids, attention_mask)


def score_batch(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sites: Sequence[str] = SITES,
    method: Method = "paper",
    chunk_bytes: int | None = None,
    qk_mode: QkMode = "exact",
) -> dict[str, torch.Tensor]:
    """PLND importance of every neuron for every document of a padded batch.

    Returns one float32 CPU tensor per requested site, shaped
    ``[batch, n_layers, site_size]``. ``sites`` may also name the LAPE counts
    of :data:`COUNT_OUTPUTS`: ``ffn_active`` (float32 ``[batch, n_layers,
    intermediate_size]`` counts of tokens with activation > 0) and ``n_tokens``
    (int64 ``[batch]``), captured in the same forward pass. ``chunk_bytes`` bounds the memory of the
    q/k probability-change work per chunk (default: :data:`DEFAULT_CHUNK_BYTES`
    for the model's device). ``qk_mode="fast"`` scores ``attn_q``/``attn_k`` with the
    second-order expansion of the probability change instead of computing it exactly
    (:mod:`langneurons.attention_change` states its error bound). Either padding side works; the
    scores do not depend on it nor on the batch size. Raises
    :class:`NonFiniteScoreError` if any score is NaN or infinite.
    """
    sites = tuple(sites)
    _validate(sites, method, qk_mode, input_ids, attention_mask)
    arch = get_architecture(model)
    dims = dimensions(model)
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES["cpu" if input_device(model).type == "cpu" else "accelerator"]
    valid = attention_mask.detach().to("cpu").bool()
    batch = _Batch(
        valid=valid,
        sites=sites,
        method=method,
        chunk_bytes=int(chunk_bytes),
        qk_mode=qk_mode,
        scores={site: [None] * dims.n_layers for site in sites if site != "n_tokens"},
    )
    # Scores need the decoder stack only: the unembedding (most of a small multilingual model) never runs.
    body = backbone(model)
    inputs = forward_inputs(model, input_ids, attention_mask, callee=body)

    with ExitStack() as stack, torch.no_grad():
        if "ffn" in sites:
            _register_ffn_capture(stack, model, arch, dims, batch)
        if any(s in ATTENTION_SITES for s in sites):
            _register_attention_capture(stack, model, arch, dims, batch)
        if "ffn_active" in sites:
            _register_active_capture(stack, model, arch, batch)
        body(**inputs)

    result = {}
    for site in sites:
        if site == "n_tokens":
            result[site] = valid.sum(dim=1)
            continue
        missing = [layer for layer, tensor in enumerate(batch.scores[site]) if tensor is None]
        if missing:
            raise RuntimeError(
                f"{site!r} was not captured in layers {missing}: the model's forward did not run the hooked "
                "modules; check its architecture entry"
            )
        stacked = torch.stack([layer.to("cpu") for layer in batch.scores[site]], dim=1)
        bad = ~torch.isfinite(stacked)
        if bad.any():
            layers = sorted(set(bad.nonzero()[:, 1].tolist()))
            raise NonFiniteScoreError(
                f"PLND scores of site {site!r} are NaN or infinite in layers {layers}: check the model's weights "
                "and dtype (fp16 overflows are common; load in bfloat16 or float32)"
            )
        result[site] = stacked
    return result


def score_documents(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    sites: Sequence[str] = SITES,
    method: Method = "paper",
    batch_size: int = 8,
    max_length: int = 512,
    chunk_bytes: int | None = None,
    progress: bool = True,
    qk_mode: QkMode = "exact",
) -> dict[str, torch.Tensor]:
    """PLND scores of whole documents, ``{site: [n_docs, n_layers, site_size]}`` in input order.

    ``sites`` may include the LAPE counts of :data:`COUNT_OUTPUTS` (see
    :func:`score_batch`); ``n_tokens`` counts the tokens after truncation.

    Documents are truncated to ``max_length`` tokens and batched by length
    (longest first) so that little padding is scored; the scores do not
    depend on the batching.
    """
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"batch_size={batch_size} and max_length={max_length} must be >= 1 and >= 2")
    if len(texts) == 0:
        raise ValueError("no documents to score")
    encoded = encode(tokenizer, texts, max_length)
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"documents {empty[:10]} tokenize to nothing; filter empty texts before scoring")
    parts: dict[str, list[torch.Tensor]] = {site: [] for site in sites}
    order: list[int] = []
    batches = tqdm(
        padded_batches(encoded, batch_size, pad_token_id(tokenizer)),
        total=-(-len(encoded) // batch_size), desc="PLND scoring", unit="batch", disable=not progress,
    )  # fmt: skip
    for rows, input_ids, attention_mask in batches:
        scores = score_batch(
            model, input_ids, attention_mask, sites=sites, method=method, chunk_bytes=chunk_bytes, qk_mode=qk_mode
        )
        order += rows
        for site in sites:
            parts[site].append(scores[site])
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {site: torch.cat(chunks)[inverse] for site, chunks in parts.items()}
