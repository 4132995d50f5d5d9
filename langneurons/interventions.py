"""Deactivating neurons through hooks, without touching the weights.

Zeroing neuron ``(layer, "ffn", k)`` is defined as zeroing ``up_proj``/``gate_proj``
row k (rows k and intermediate_size + k of a fused ``gate_up_proj``) and
``down_proj`` column k; zeroing ``(layer, "attn_q", k)`` as zeroing row k (and
bias entry k) of the query projection, and likewise for keys and values.
The hooks here zero the same quantities on the fly: the k-th input of the down
projection, or the k-th output row of the (possibly fused) q/k/v projection.
Many conditions can then run against one loaded model, on any device map.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from langneurons.architectures import (
    dimensions,
    ffn_input_rows,
    get_architecture,
    get_submodule,
    projection_columns,
    projection_path,
    weight_out_in,
)
from langneurons.conditions import CONDITIONS, STAGES, layer_stages  # noqa: F401 - the stages' home; re-exported
from langneurons.neuronset import NeuronSet, NeuronSpace

NeuronGroups = dict[tuple[int, str], torch.Tensor]


def group_neurons(model: nn.Module, neurons: Any) -> NeuronGroups:
    """Check neuron addresses against ``model`` and group their indices by ``(layer, site)``.

    ``neurons`` is a :class:`~langneurons.neuronset.NeuronSet`, a table with columns ``layer,
    site, index`` or an iterable of ``(layer, site, index)``; a set already checked against this
    model's :class:`~langneurons.neuronset.NeuronSpace` is not checked again.
    """
    neuron_set = NeuronSet.coerce(neurons, NeuronSpace.of(model))
    return {key: torch.from_numpy(index) for key, index in neuron_set.groups().items()}


def _zero_input_columns(columns: torch.Tensor):
    def hook(module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        return (hidden.index_fill(-1, columns.to(hidden.device), 0), *args[1:])

    return hook


def _zero_output_columns(columns: torch.Tensor):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.index_fill(-1, columns.to(output.device), 0)

    return hook


@contextmanager
def deactivate(model: nn.Module, neurons: Any) -> Iterator[NeuronGroups]:
    """Zero the given neurons inside the ``with`` block; restore them on exit.

    ``neurons``: a :class:`~langneurons.neuronset.NeuronSet` or anything :func:`group_neurons`
    takes (all its languages' neurons are zeroed: select one first, ``set.by_language()["fr"]``).
    The hooks are removed on exit, also when the block raises. Yields the validated
    ``{(layer, site): indices}`` groups. ``langneurons.ablate`` is this function.
    """
    groups = group_neurons(model, neurons)
    arch = get_architecture(model)
    dims = dimensions(model)
    layers = get_submodule(model, arch.layers)

    input_columns: dict[nn.Module, list[torch.Tensor]] = defaultdict(list)
    output_columns: dict[nn.Module, list[torch.Tensor]] = defaultdict(list)
    for (layer, site), index in groups.items():
        if site == "ffn":
            input_columns[get_submodule(layers[layer], arch.ffn_out)].append(index)
        else:
            module = get_submodule(layers[layer], projection_path(arch, site))
            output_columns[module].append(projection_columns(arch, dims, site, index))

    handles = []
    try:
        for module, parts in input_columns.items():
            handles.append(module.register_forward_pre_hook(_zero_input_columns(torch.cat(parts))))
        for module, parts in output_columns.items():
            handles.append(module.register_forward_hook(_zero_output_columns(torch.cat(parts))))
        yield groups
    finally:
        for handle in handles:
            handle.remove()


def zero_weights_(model: nn.Module, neurons: Any) -> None:
    """Deactivate neurons by editing the weights in place (the definition).

    Used as the reference that :func:`deactivate` is tested against, and where
    a permanently pruned copy is wanted.
    """
    groups = group_neurons(model, neurons)
    arch = get_architecture(model)
    dims = dimensions(model)
    layers = get_submodule(model, arch.layers)
    with torch.no_grad():
        for (layer, site), index in groups.items():
            block = layers[layer]
            if site == "ffn":
                weight_out_in(arch, get_submodule(block, arch.ffn_out))[:, index] = 0
                owned = ffn_input_rows(arch, dims, index)
            else:
                owned = [(projection_path(arch, site), projection_columns(arch, dims, site, index))]
            for path, rows in owned:
                module = get_submodule(block, path)
                weight_out_in(arch, module)[rows, :] = 0
                if module.bias is not None:
                    module.bias[rows] = 0


def condition_neurons(neurons, condition: str, stages: list[str]):
    """The rows of a neuron table that an ablation condition deactivates.

    ``stages`` is :func:`layer_stages`' per-layer list for the model.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"ablation condition {condition!r} is unknown; use one of {', '.join(CONDITIONS)}")
    wanted_stages, wanted_sites = CONDITIONS[condition]
    layers = [layer for layer, stage in enumerate(stages) if stage in wanted_stages]
    keep = neurons["layer"].isin(layers) & neurons["site"].isin(wanted_sites)
    return neurons[keep].reset_index(drop=True)


#: The name the package root exports (``with langneurons.ablate(model, neuron_set): ...``).
ablate = deactivate
