"""Which parameter entries each neuron owns, read off the modeling code's own arithmetic.

The reference for deactivation hooks, ``zero_weights_`` and fine-tuning masks. It uses
none of langneurons' layout code (``projection_columns``, ``ffn_input_rows``, the
weight layout), only the table's module paths, and asks the model instead:

- attention rows: the outputs of a layer's q/k/v projection module(s) are replaced by
  one-hot vectors (feature r of the probed module, zeros elsewhere) on a one-token
  input, where rotary embeddings are the identity up to a scale and a query/key norm
  keeps a one-hot vector one-hot. The (site, head, dim) of the query, key or value
  tensor that the modeling code hands to its attention function which is non-zero is
  the neuron that row r belongs to.
- FFN rows: output feature r of an FFN input projection is perturbed; the input of the
  down projection that moves is the unit that row r belongs to.
- stored entries: the parameter entries that output row r (or down-projection input k)
  flows through, from autograd (the support of the gradient).
"""

from __future__ import annotations

import functools
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call, jacrev
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from langneurons.architectures import get_architecture, get_submodule

_PROBE = "langneurons_test_probe"
_SEEN: dict = {}


class _Captured(Exception):
    """Raised once the probed layer's q/k/v have been seen; nothing after them matters."""


def _probe_attention(module, query, key, value, *args, **kwargs):
    if module is _SEEN.get("module"):
        _SEEN["qkv"] = (query, key, value)
        raise _Captured
    eager = sys.modules[type(module).__module__].eager_attention_forward  # the family's own eager attention
    return eager(module, query, key, value, *args, **kwargs)


AttentionInterface.register(_PROBE, _probe_attention)
AttentionMaskInterface.register(_PROBE, eager_mask)


def _run(model: nn.Module, batch: int, hooks: dict[nn.Module, Callable], pre_hooks: dict[nn.Module, Callable]):
    """One forward of ``batch`` one-token documents with the given hooks; stops at a _Captured."""
    ids = torch.full((batch, 1), 5, dtype=torch.long)
    handles = [m.register_forward_hook(h) for m, h in hooks.items()]
    handles += [m.register_forward_pre_hook(h) for m, h in pre_hooks.items()]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()


def _widths(model: nn.Module, modules: Iterable[nn.Module]) -> dict[nn.Module, tuple[int, int]]:
    """``{module: (input features, output features)}`` as the modules see them in a forward pass."""
    widths: dict[nn.Module, tuple[int, int]] = {}

    def record(mod, args, output) -> None:
        widths.setdefault(mod, (args[0].shape[-1], output.shape[-1]))

    _run(model, 1, {m: record for m in modules}, {})
    return widths


def _attention_rows(model: nn.Module, layer: int) -> dict[tuple[str, int], tuple[str, int]]:
    """``{(projection path, output row): (site, index)}`` of one layer."""
    arch = get_architecture(model)
    block = get_submodule(model, arch.layers)[layer]
    attention = get_submodule(block, arch.attention)
    modules = {path: get_submodule(block, path) for path in dict.fromkeys((arch.q_proj, arch.k_proj, arch.v_proj))}
    widths = _widths(model, modules.values())
    found: dict[tuple[str, int], tuple[str, int]] = {}
    for path, probed in modules.items():
        width = widths[probed][1]

        def one_hot(mod, args, output, probed=probed, width=width):
            if mod is probed:
                return torch.eye(width, dtype=output.dtype).reshape(output.shape)
            return torch.zeros_like(output)

        _SEEN.update(module=attention, qkv=None)
        previous = model.config._attn_implementation
        if arch.attention_capture == "bloom":  # BLOOM attends inline: read what its own _reshape returns
            original = attention._reshape

            def reshape(fused, original=original):
                _SEEN["qkv"] = original(fused)
                raise _Captured

            attention._reshape = reshape
        else:
            model.set_attn_implementation(_PROBE)
        try:
            _run(model, width, {m: one_hot for m in modules.values()}, {})
            qkv = _SEEN.pop("qkv")
        finally:
            _SEEN.clear()
            if arch.attention_capture == "bloom":
                del attention._reshape
            else:
                model.set_attn_implementation(previous)
        assert qkv is not None, f"layer {layer}'s attention never ran"
        for row in range(width):
            hits = []
            for site, tensor in zip(("attn_q", "attn_k", "attn_v"), qkv):
                per_head = tensor[row, :, 0].float()  # [heads, head_dim] at the only position
                hits += [(site, h * per_head.shape[1] + d) for h, d in (per_head.abs() > 1e-6).nonzero().tolist()]
            assert len(hits) == 1, f"row {row} of {path} reaches {hits}, not exactly one q/k/v entry"
            found[(path, row)] = hits[0]
    return found


def _ffn_rows(model: nn.Module, layer: int) -> dict[tuple[str, int], int]:
    """``{(FFN input path, output row): unit}`` of one layer: the down-projection input each row moves."""
    arch = get_architecture(model)
    block = get_submodule(model, arch.layers)[layer]
    down = get_submodule(block, arch.ffn_out)
    modules = {path: get_submodule(block, path) for path in dict.fromkeys(p for p in (arch.ffn_in, arch.ffn_gate) if p)}
    widths = _widths(model, modules.values())
    found: dict[tuple[str, int], int] = {}
    for path, probed in modules.items():
        width = widths[probed][1]
        seen = {}

        def perturb(mod, args, output, width=width):
            # batch row r + 1 moves feature r; batch row 0 is the unperturbed reference
            shift = torch.cat([torch.zeros(1, width), torch.eye(width)]).to(output.dtype)
            return output + shift.reshape(output.shape)

        def keep(mod, args):
            seen["down_in"] = args[0].reshape(width + 1, -1).float()
            raise _Captured

        _run(model, width + 1, {probed: perturb}, {down: keep})
        moved = (seen["down_in"][1:] - seen["down_in"][:1]).abs() > 1e-6
        for row in range(width):
            units = moved[row].nonzero().flatten().tolist()
            assert len(units) == 1, f"row {row} of {path} moves down-projection inputs {units}, not exactly one"
            found[(path, row)] = units[0]
    return found


def _support(module: nn.Module, value: Callable[[nn.Module, dict], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per entry i of the vector ``value``: the parameter entries it depends on (non-zero Jacobian).

    Returns ``{parameter name: bool [len(value), *parameter shape]}``.
    """
    params = {name: param.detach() for name, param in module.named_parameters(recurse=False)}
    jacobian = jacrev(lambda p: value(module, p))(params)
    return {name: j != 0 for name, j in jacobian.items()}


def _row_entries(module: nn.Module, in_features: int) -> dict[str, torch.Tensor]:
    """Per output feature r: the entries it flows through, ``{name: bool [out, *shape]}``."""
    x = torch.rand(1, in_features, generator=torch.Generator().manual_seed(0)) + 0.5
    return _support(module, lambda m, p: functional_call(m, p, (x,)).reshape(-1))


def _input_entries(module: nn.Module, in_features: int) -> dict[str, torch.Tensor]:
    """Per input feature k: the entries it flows through, ``{name: bool [in, *shape]}``.

    A bias, which every input shares, is no input's: entries that matter with a zero input are left out.
    """
    one_hot = torch.eye(in_features)
    with_input = _support(module, lambda m, p: functional_call(m, p, (one_hot,)).sum(-1))
    without = _support(module, lambda m, p: functional_call(m, p, (torch.zeros(1, in_features),)).sum(-1))
    return {name: with_input[name] & ~without[name] for name in with_input}


Entries = dict[str, torch.Tensor]  # parameter name -> bool mask of the entries a neuron owns


def owned_entries(model: nn.Module) -> dict[tuple[int, str, int], Entries]:
    """For every neuron ``(layer, site, index)``: the parameter entries it owns, by the probes above."""
    arch = get_architecture(model)
    names = {module: name for name, module in model.named_modules()}
    owned: dict[tuple[int, str, int], Entries] = defaultdict(dict)

    def add(neuron: tuple[int, str, int], module: nn.Module, entries: Entries) -> None:
        for param, mask in entries.items():
            name = f"{names[module]}.{param}"
            owned[neuron][name] = owned[neuron].get(name, torch.zeros_like(mask)) | mask

    for layer, block in enumerate(get_submodule(model, arch.layers)):
        attention = _attention_rows(model, layer)
        ffn = _ffn_rows(model, layer)
        down = get_submodule(block, arch.ffn_out)
        modules = {path: get_submodule(block, path) for path, _ in (*attention, *ffn)}
        widths = _widths(model, [*modules.values(), down])
        rows = {path: _row_entries(module, widths[module][0]) for path, module in modules.items()}
        for (path, row), (site, index) in attention.items():
            add((layer, site, index), modules[path], {name: e[row] for name, e in rows[path].items()})
        for (path, row), unit in ffn.items():
            add((layer, "ffn", unit), modules[path], {name: e[row] for name, e in rows[path].items()})
        inputs = _input_entries(down, widths[down][0])
        for unit in range(widths[down][0]):
            add((layer, "ffn", unit), down, {name: e[unit] for name, e in inputs.items()})
    return dict(owned)


def reference_mask(model: nn.Module, owned: dict[tuple[int, str, int], Entries], neurons) -> dict[str, torch.Tensor]:
    """``{parameter name: bool mask}`` of every entry the neurons own (all-False for other parameters)."""
    mask = {name: torch.zeros_like(param, dtype=torch.bool) for name, param in model.named_parameters()}
    for layer, site, index in neurons:
        for name, entries in owned[(int(layer), site, int(index))].items():
            mask[name] |= entries
    return mask


def zero_reference_(model: nn.Module, mask: dict[str, torch.Tensor]) -> None:
    """Zero the masked entries in place: the definition of deactivating the neurons."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            param[mask[name]] = 0


@functools.cache
def tiny_owned_entries(name: str) -> dict[tuple[int, str, int], Entries]:
    """:func:`owned_entries` of ``tests.models.tiny_model(name)`` (the masks depend on the structure only)."""
    from models import tiny_model

    return owned_entries(tiny_model(name))
