"""Deactivation hooks and weight zeroing against what the modeling code says each neuron owns."""

import copy

import pandas as pd
import pytest
import torch
from layout_probe import reference_mask, tiny_owned_entries, zero_reference_
from models import ARCHITECTURE_NAMES, random_batch, tiny_model

import langneurons
from langneurons.architectures import SITES, NeuronIndexError, UnsupportedArchitectureError, dimensions
from langneurons.interventions import deactivate, zero_weights_
from langneurons.neuronset import NeuronSet, NeuronSpace


def _sample_neurons(model, seed: int, per_site: int = 5) -> list[tuple[int, str, int]]:
    gen = torch.Generator().manual_seed(seed)
    sizes = langneurons.site_sizes(model)
    n_layers = dimensions(model).n_layers
    neurons = []
    for site in SITES:
        for _ in range(per_site):
            layer = int(torch.randint(n_layers, (1,), generator=gen))
            neurons.append((layer, site, int(torch.randint(sizes[site], (1,), generator=gen))))
    return neurons


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_zero_weights_zeroes_what_the_modeling_code_says_each_neuron_owns(name):
    """Every neuron, one at a time: zero_weights_ zeroes exactly the entries the layout probe finds."""
    model = tiny_model(name)
    owned = tiny_owned_entries(name)
    sizes, n_layers = langneurons.site_sizes(model), dimensions(model).n_layers
    expected = {(layer, site, i) for layer in range(n_layers) for site in SITES for i in range(sizes[site])}
    assert set(owned) == expected, "the model's q/k/v/ffn neurons are not the ones site_sizes counts"
    ones = copy.deepcopy(model)
    params = dict(ones.named_parameters())
    with torch.no_grad():
        for neuron in sorted(owned):
            for param in params.values():
                param.fill_(1.0)
            zero_weights_(ones, [neuron])
            for pname, param in params.items():
                want = owned[neuron].get(pname, torch.zeros_like(param, dtype=torch.bool))
                assert torch.equal(param == 0, want), f"{name} {neuron}: zero_weights_ disagrees on {pname}"


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_hooks_equal_zeroed_weights_and_are_removed(name):
    model = tiny_model(name)
    ids, mask = random_batch(3, 12, seed=1)
    neurons = _sample_neurons(model, seed=2)
    original = _logits(model, ids, mask)

    reference = copy.deepcopy(model)
    zero_reference_(reference, reference_mask(reference, tiny_owned_entries(name), neurons))
    expected = _logits(reference, ids, mask)
    assert not torch.allclose(expected, original, atol=1e-4), "the sampled neurons must matter"

    with deactivate(model, neurons):
        hooked = _logits(model, ids, mask)
    torch.testing.assert_close(hooked, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_logits(model, ids, mask), original, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom", "phi3", "olmo2"])
def test_each_site_alone_equals_zeroed_weights(name):
    model = tiny_model(name)
    ids, mask = random_batch(2, 10, seed=3)
    for site in SITES:
        size = langneurons.site_sizes(model)[site]
        neurons = [(1, site, i) for i in range(0, size, 3)]
        reference = copy.deepcopy(model)
        zero_reference_(reference, reference_mask(reference, tiny_owned_entries(name), neurons))
        with deactivate(model, neurons):
            hooked = _logits(model, ids, mask)
        torch.testing.assert_close(hooked, _logits(reference, ids, mask), rtol=1e-4, atol=1e-5)


def test_hooks_removed_when_block_raises():
    model = tiny_model("llama")
    ids, mask = random_batch(2, 8)
    original = _logits(model, ids, mask)
    with pytest.raises(RuntimeError, match="boom"):
        with deactivate(model, [(0, "ffn", 1), (2, "attn_k", 3)]):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    torch.testing.assert_close(_logits(model, ids, mask), original, rtol=0, atol=0)


def test_dataframe_input_equals_tuples():
    model = tiny_model("qwen2")
    ids, mask = random_batch(2, 8)
    neurons = _sample_neurons(model, seed=5)
    table = pd.DataFrame(neurons, columns=["layer", "site", "index"]).assign(language="fr")
    with deactivate(model, neurons):
        from_tuples = _logits(model, ids, mask)
    with deactivate(model, table):
        from_table = _logits(model, ids, mask)
    torch.testing.assert_close(from_table, from_tuples, rtol=0, atol=0)


def test_ablating_a_neuron_set_equals_zeroing_the_weights_of_its_addresses():
    """langneurons.ablate takes a NeuronSet; neurons shared by two languages are zeroed once."""
    model = tiny_model("llama")
    ids, mask = random_batch(3, 12, seed=4)
    fr, zh = set(_sample_neurons(model, seed=6)), set(_sample_neurons(model, seed=7))
    shared = sorted(fr)[:3]
    rows = [("fr", *n) for n in sorted(fr)] + [("zh", *n) for n in sorted(zh | set(shared))]
    table = pd.DataFrame(rows, columns=["language", "layer", "site", "index"])
    neuron_set = NeuronSet(table, NeuronSpace.of(model))
    reference = copy.deepcopy(model)
    union = fr | zh | set(shared)
    zero_reference_(reference, reference_mask(reference, tiny_owned_entries("llama"), sorted(union)))
    with langneurons.ablate(model, neuron_set) as groups:
        hooked = _logits(model, ids, mask)
    torch.testing.assert_close(hooked, _logits(reference, ids, mask), rtol=1e-4, atol=1e-5)
    assert {(layer, site, i) for (layer, site), index in groups.items() for i in index.tolist()} == union
    only_fr = copy.deepcopy(model)
    zero_reference_(only_fr, reference_mask(only_fr, tiny_owned_entries("llama"), sorted(fr)))
    with langneurons.ablate(model, neuron_set.by_language()["fr"]):
        torch.testing.assert_close(_logits(model, ids, mask), _logits(only_fr, ids, mask), rtol=1e-4, atol=1e-5)


def test_a_neuron_set_of_another_model_is_refused_before_any_hook():
    model = tiny_model("llama")
    other = NeuronSet([(0, "ffn", 1)], NeuronSpace(dimensions(model).n_layers + 1, langneurons.site_sizes(model)))
    with pytest.raises(NeuronIndexError, match="belongs to a model with"):
        with deactivate(model, other):
            pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_gradients_flow_through_hooks():
    model = tiny_model("llama")
    ids, mask = random_batch(2, 8)
    with deactivate(model, [(0, "ffn", 1)]):
        model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    down = model.model.layers[0].mlp.down_proj.weight.grad
    assert torch.all(down[:, 1] == 0) and down.abs().sum() > 0


@pytest.mark.parametrize(
    "neuron, message",
    [
        ((0, "ffn", 48), "index 48 of site 'ffn' is out of range"),
        ((3, "ffn", 0), "layer 3 is out of range"),
        ((0, "attn_k", 32), "index 32 of site 'attn_k'"),
        ((0, "mlp", 0), "site 'mlp' is unknown"),
        ((-1, "ffn", 0), "layer -1 is out of range"),
    ],
)
def test_bad_neuron_addresses_are_named(neuron, message):
    model = tiny_model("llama")
    with pytest.raises(NeuronIndexError, match=message):
        with deactivate(model, [neuron]):
            pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_unknown_architecture_names_class_and_supported_ones():
    class MyCustomForCausalLM(torch.nn.Module):
        config = None

    with pytest.raises(UnsupportedArchitectureError, match="MyCustomForCausalLM.*LlamaForCausalLM.*ARCHITECTURES"):
        langneurons.site_sizes(MyCustomForCausalLM())


def test_layer_stages_scale_with_depth_and_reject_overlap():
    from langneurons.interventions import layer_stages

    stages = layer_stages(32)
    assert stages.count("understanding") == 8 and stages.count("generation") == 4
    assert stages[:8] == ["understanding"] * 8 and stages[-4:] == ["generation"] * 4
    assert layer_stages(6) == ["understanding", "understanding", "task", "task", "task", "generation"]
    assert layer_stages(6, 1, 2) == ["understanding", "task", "task", "task", "generation", "generation"]
    with pytest.raises(ValueError, match=r"stages.understanding=4 \+ stages.generation=2 .* 6-layer"):
        layer_stages(6, 4, 2)


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_every_table_path_resolves(name):
    from langneurons.architectures import get_architecture, get_submodule, optional_submodule

    model = tiny_model(name)
    arch = get_architecture(model)
    assert get_submodule(model, arch.unembedding) is model.get_output_embeddings()
    assert isinstance(get_submodule(model, arch.final_norm), torch.nn.Module)
    assert isinstance(get_submodule(model, arch.backbone), torch.nn.Module)
    projection = optional_submodule(model, arch.post_norm_projection)
    assert projection is None or isinstance(projection, torch.nn.Module)
    block = get_submodule(model, arch.layers)[0]
    fields = ("attention", "q_proj", "k_proj", "v_proj", "o_proj", "ffn_in", "ffn_out", "ffn_gate", "ffn_act")
    for field in (*fields, "q_norm", "k_norm"):
        path = getattr(arch, field)
        if path is not None:
            assert isinstance(get_submodule(block, path), torch.nn.Module), field


def test_conditions_select_stage_layers_and_structures():
    from langneurons.interventions import CONDITIONS, condition_neurons, layer_stages

    stages = layer_stages(8, 2, 1)  # U U T T T T T G
    table = pd.DataFrame(
        [(layer, site, 0) for layer in range(8) for site in SITES], columns=["layer", "site", "index"]
    )
    picked = {c: condition_neurons(table, c, stages) for c in CONDITIONS}
    assert set(picked["understanding"]["layer"]) == {0, 1} and len(picked["understanding"]) == 8
    assert set(picked["task_attention"]["site"]) == {"attn_q", "attn_k", "attn_v"}
    assert set(picked["task_attention"]["layer"]) == set(range(2, 7))
    assert set(picked["task_ffn"]["site"]) == {"ffn"} and len(picked["task_ffn"]) == 5
    assert set(picked["generation"]["layer"]) == {7}
    assert len(picked["all"]) == len(table)
    with pytest.raises(ValueError, match="condition 'middle' is unknown"):
        condition_neurons(table, "middle", stages)
