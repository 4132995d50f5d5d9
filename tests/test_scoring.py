"""PLND scores against brute force: zero the neuron's weights for real, recompute, compare."""

import copy
import inspect

import pytest
import torch
from models import ARCHITECTURE_NAMES, VARIANT_NAMES, random_batch, tiny_model, to_padding_side, word_tokenizer
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import langneurons
from langneurons.architectures import dimensions, forward_inputs, get_architecture, get_submodule
from langneurons.interventions import zero_weights_
from langneurons.scoring import NonFiniteScoreError, score_batch

N_PER_SITE = 5


def _forward(model, ids, mask, **kwargs):
    inputs = dict(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
    if "position_ids" in inspect.signature(model.forward).parameters:
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(**inputs)


def _module_output(model, path, layer, ids, mask):
    """Output of ``path`` inside decoder layer ``layer``, as [B, T, features]."""
    arch = get_architecture(model)
    module = get_submodule(get_submodule(model, arch.layers)[layer], path)
    seen = {}
    handle = module.register_forward_hook(lambda mod, args, out: seen.setdefault("out", out))
    try:
        _forward(model, ids, mask)
    finally:
        handle.remove()
    return seen["out"].reshape(*ids.shape, -1)


def _eager_probs(model, ids, mask, layer):
    model = copy.deepcopy(model)
    if get_architecture(model).attention_capture == "interface":
        model.set_attn_implementation("eager")
    return _forward(model, ids, mask, output_attentions=True).attentions[layer].float()


def _sample(model, site, seed):
    gen = torch.Generator().manual_seed(seed)
    dims = dimensions(model)
    layers = torch.randint(dims.n_layers, (N_PER_SITE,), generator=gen).tolist()
    layers[:2] = [0, dims.n_layers - 1]
    return [(layer, int(torch.randint(dims.site_size(site), (1,), generator=gen))) for layer in layers]


def _brute_force(model, site, layer, index, ids, mask):
    """Imp of one neuron per document, by zeroing its weights in a copy of the model."""
    arch = get_architecture(model)
    ablated = copy.deepcopy(model)
    zero_weights_(ablated, [(layer, site, index)])
    valid = mask.bool()[..., None]
    if site in ("ffn", "attn_v"):
        path = arch.ffn_out if site == "ffn" else arch.o_proj
        before = _module_output(model, path, layer, ids, mask)
        after = _module_output(ablated, path, layer, ids, mask)
        return ((after - before) * valid).square().sum(dim=(1, 2)).sqrt()
    before = _eager_probs(model, ids, mask, layer)
    after = _eager_probs(ablated, ids, mask, layer)
    change = (after - before) * mask.bool()[:, None, :, None]
    return change.square().sum(dim=(1, 2, 3)).sqrt()


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES + VARIANT_NAMES)
def test_parallel_scores_equal_brute_force(name):
    model = tiny_model(name)
    ids, mask = random_batch(3, 11, seed=4)
    scores = score_batch(model, ids, mask)
    for site_number, site in enumerate(langneurons.SITES):
        for layer, index in _sample(model, site, seed=site_number):
            expected = _brute_force(model, site, layer, index, ids, mask)
            assert expected.max() > 1e-6, f"{site} neuron {layer}/{index} has no effect; the test would be vacuous"
            torch.testing.assert_close(
                scores[site][:, layer, index], expected, rtol=2e-4, atol=1e-7,
                msg=lambda m: f"{name} {site} layer {layer} index {index}: {m}",
            )


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_scoring_stops_at_the_last_hidden_state(name, monkeypatch):
    """The unembedding never runs, and the scores are those of a full forward pass."""
    model = tiny_model(name)
    ids, mask = random_batch(2, 9, seed=3)
    arch = get_architecture(model)
    body = get_submodule(model, arch.backbone)
    with torch.no_grad():
        hidden = body(**forward_inputs(model, ids, mask, callee=body)).last_hidden_state
        logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    logits = logits if cap is None else torch.tanh(logits / cap) * cap
    # the table's backbone is what the unembedding reads
    torch.testing.assert_close(logits, _forward(model, ids, mask).logits, rtol=1e-5, atol=1e-6)

    calls = []
    handle = model.get_output_embeddings().register_forward_hook(lambda *args: calls.append(args))
    try:
        scores = score_batch(model, ids, mask)
    finally:
        handle.remove()
    assert not calls, "scoring ran the unembedding"
    monkeypatch.setattr(langneurons.scoring, "backbone", lambda whole: whole)
    through_logits = score_batch(model, ids, mask)
    for site in scores:
        torch.testing.assert_close(scores[site], through_logits[site], rtol=0, atol=0)


def test_rotary_exact_form_differs_from_post_rope_form():
    """The pre-RoPE score is not the post-RoPE one: the test above would catch a mix-up."""
    model = tiny_model("llama")
    ids, mask = random_batch(2, 12, seed=1)
    paper = score_batch(model, ids, mask, sites=("attn_q",))["attn_q"]
    released = score_batch(model, ids, mask, sites=("attn_q",), method="released_code")["attn_q"]
    assert not torch.allclose(paper.square(), released, rtol=0.05)


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_scores_do_not_depend_on_batch_size_or_padding_side(name):
    model = tiny_model(name)
    ids, mask = random_batch(8, 13, seed=7, min_length=3)
    right = score_batch(model, ids, mask)
    left = score_batch(model, *to_padding_side(ids, mask, "left"))
    for site in right:
        torch.testing.assert_close(left[site], right[site], rtol=2e-4, atol=1e-6)
    for row in (1, 5):
        tokens = ids[row][mask[row].bool()][None]
        alone = score_batch(model, tokens, torch.ones_like(tokens))
        for site in right:
            torch.testing.assert_close(alone[site][0], right[site][row], rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["gemma2", "gemma3_multimodal", "olmo2"])
def test_chunking_does_not_change_scores(name):
    model = tiny_model(name)
    ids, mask = random_batch(2, 12, seed=2)
    whole = score_batch(model, ids, mask, sites=("attn_q", "attn_k"))
    chunked = score_batch(model, ids, mask, sites=("attn_q", "attn_k"), chunk_bytes=1)
    for site in whole:
        torch.testing.assert_close(chunked[site], whole[site], rtol=1e-5, atol=1e-7)


def test_padding_tokens_contribute_nothing():
    model = tiny_model("llama")
    ids, mask = random_batch(2, 10, seed=3, min_length=4)
    other_padding = torch.where(mask.bool(), ids, torch.full_like(ids, 50))
    a, b = score_batch(model, ids, mask), score_batch(model, other_padding, mask)
    for site in a:
        torch.testing.assert_close(a[site], b[site], rtol=1e-5, atol=1e-7)


def test_output_layout_and_site_subsets():
    model = tiny_model("qwen2")
    ids, mask = random_batch(2, 9)
    sizes = langneurons.site_sizes(model)
    everything = score_batch(model, ids, mask)
    for site, tensor in everything.items():
        assert tensor.shape == (2, 3, sizes[site]) and tensor.dtype == torch.float32
        assert tensor.device.type == "cpu"
    only_ffn = score_batch(model, ids, mask, sites=("ffn",))
    assert set(only_ffn) == {"ffn"}
    torch.testing.assert_close(only_ffn["ffn"], everything["ffn"])


@pytest.mark.parametrize("name", ["llama", "gemma3", "olmo2", "phi3"])
def test_half_precision_model_scores_in_float32(name):
    model = tiny_model(name)
    ids, mask = random_batch(3, 12, seed=5)
    full = score_batch(model, ids, mask)
    half = score_batch(copy.deepcopy(model).to(torch.bfloat16), ids, mask)
    for site in full:
        assert half[site].dtype == torch.float32
        correlation = torch.corrcoef(torch.stack([full[site].flatten(), half[site].flatten()]))[0, 1]
        assert correlation > 0.97, site


def test_device_map_dispatched_model_scores_the_same(tmp_path):
    """A model dispatched by accelerate, one layer offloaded to disk, scores and deactivates the same."""
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    device_map = {
        "model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
        "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
    }
    dispatched = AutoModelForCausalLM.from_pretrained(
        tmp_path / "model", device_map=device_map, offload_folder=tmp_path / "offload", dtype=torch.float32
    )
    assert dispatched.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    ids, mask = random_batch(2, 9, seed=6)
    expected, got = score_batch(model, ids, mask), score_batch(dispatched, ids, mask)
    for site in expected:
        torch.testing.assert_close(got[site], expected[site], rtol=1e-5, atol=1e-7)
    neurons = [(1, "ffn", 3), (1, "attn_q", 5), (2, "attn_v", 1)]
    with langneurons.deactivate(model, neurons):
        reference = _forward(model, ids, mask).logits
    with langneurons.deactivate(dispatched, neurons):
        torch.testing.assert_close(_forward(dispatched, ids, mask).logits, reference, rtol=1e-5, atol=1e-6)


def test_scoring_leaves_the_model_as_it_was():
    model = tiny_model("llama")
    ids, mask = random_batch(2, 9)
    implementation = model.config._attn_implementation
    before = _forward(model, ids, mask).logits
    score_batch(model, ids, mask)
    assert model.config._attn_implementation == implementation
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    torch.testing.assert_close(_forward(model, ids, mask).logits, before, rtol=0, atol=0)


# ---- the released research code's variant (method.md section 3) ----------------------------


def _llama_internals(model, ids, mask, layer):
    """Post-RoPE q/k, raw v, masked scores and probabilities of one Llama layer."""
    attention = model.model.layers[layer].self_attn
    seen = {}
    hooks = [
        attention.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True),
        model.model.layers[layer].mlp.up_proj.register_forward_hook(lambda m, a, o: seen.update(up=o)),
    ]
    for name in ("q_proj", "k_proj", "v_proj"):
        hooks.append(getattr(attention, name).register_forward_hook(lambda m, a, o, n=name: seen.update({n: o})))
    probs = _eager_probs(model, ids, mask, layer)
    _forward(model, ids, mask)
    for hook in hooks:
        hook.remove()
    dims = dimensions(model)
    shape = lambda x: x.view(*ids.shape, -1, dims.head_dim).transpose(1, 2)  # noqa: E731
    q, k = apply_rotary_pos_emb(shape(seen["q_proj"]), shape(seen["k_proj"]), *seen["position_embeddings"])
    group = dims.group_size
    k, v = k.repeat_interleave(group, 1), shape(seen["v_proj"]).repeat_interleave(group, 1)
    causal = torch.ones(ids.shape[1], ids.shape[1]).tril().bool()
    allowed = causal[None, None] & mask.bool()[:, None, None, :]
    scores = (q @ k.transpose(-1, -2)) * attention.scaling
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
    torch.testing.assert_close(torch.softmax(scores, -1) * mask[:, None, :, None], probs * mask[:, None, :, None])
    return q, k, v, scores, probs, seen["up"]


def test_released_code_variant_computes_what_method_md_says():
    model = tiny_model("llama")
    dims = dimensions(model)
    ids, mask = random_batch(2, 10, seed=8)
    released = score_batch(model, ids, mask, method="released_code")
    valid = mask.bool()
    layer = 1
    q, k, v, scores, probs, up = _llama_internals(model, ids, mask, layer)

    expected_ffn = (up.abs() * valid[..., None]).sum(1)
    torch.testing.assert_close(released["ffn"][:, layer], expected_ffn, rtol=1e-5, atol=1e-6)

    mixed = (probs @ v).abs() * valid[:, None, :, None]  # |P V| before W_o, [B, H, T, D]
    expected_v = mixed.sum(2).view(2, dims.n_kv_heads, dims.group_size, dims.head_dim).sum(2).flatten(1)
    torch.testing.assert_close(released["attn_v"][:, layer], expected_v, rtol=1e-5, atol=1e-6)

    def squared_change(delta, heads):
        changed = torch.softmax(scores[:, heads] - delta, -1)
        return ((changed - probs[:, heads]).square() * valid[:, None, :, None]).sum(dim=(1, 2, 3))

    for index in (0, 5, 17, 31):
        head, dim = divmod(index, dims.head_dim)
        delta = q[:, head, :, dim, None] * k[:, head, None, :, dim]  # not divided by sqrt(d)
        expected = squared_change(delta[:, None], [head])
        torch.testing.assert_close(released["attn_q"][:, layer, index], expected, rtol=1e-4, atol=1e-9)
    for index in (2, 9, 15):
        kv_head, dim = divmod(index, dims.head_dim)
        heads = list(range(kv_head * dims.group_size, (kv_head + 1) * dims.group_size))
        delta = q[:, heads, :, dim, None] * k[:, heads, None, :, dim]
        expected = squared_change(delta, heads)
        torch.testing.assert_close(released["attn_k"][:, layer, index], expected, rtol=1e-4, atol=1e-9)


# ---- bad input --------------------------------------------------------------------------------


def test_nan_weights_raise_a_clear_error():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 0] = float("nan")
    ids, mask = random_batch(2, 8)
    with pytest.raises(NonFiniteScoreError, match=r"site 'ffn' are NaN or infinite in layers \[1, 2\]"):
        score_batch(model, ids, mask, sites=("ffn",))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sites=("mlp",)), "sites=\\['mlp'\\]"),
        (dict(method="exact"), "method='exact' is unknown"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    model = tiny_model("llama")
    ids, mask = random_batch(2, 8)
    with pytest.raises(ValueError, match=message):
        score_batch(model, ids, mask, **kwargs)


def test_empty_document_is_rejected():
    model = tiny_model("llama")
    ids, mask = random_batch(2, 8)
    mask[1] = 0
    with pytest.raises(ValueError, match=r"documents \[1\] of the batch have no tokens"):
        score_batch(model, ids, mask)


def test_score_documents_returns_input_order_whatever_the_batching():
    from langneurons.scoring import score_documents

    model, tokenizer = tiny_model("llama"), word_tokenizer()
    gen = torch.Generator().manual_seed(0)
    texts = [" ".join(f"w{int(i)}" for i in torch.randint(3, 90, (int(n),), generator=gen)) for n in [5, 12, 3, 9, 7]]
    one = score_documents(model, tokenizer, texts, batch_size=1, progress=False)
    three = score_documents(model, tokenizer, texts, batch_size=3, progress=False)
    for site in langneurons.SITES:
        assert one[site].shape[0] == 5
        torch.testing.assert_close(three[site], one[site], rtol=2e-4, atol=1e-6)
    for row, text in enumerate(texts):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        alone = score_batch(model, ids, torch.ones_like(ids), sites=("ffn",))["ffn"][0]
        torch.testing.assert_close(one["ffn"][row], alone, rtol=1e-5, atol=1e-7)


# ---- LAPE activation counts (Tang et al. 2024) from the same forward pass ---------------------

_BY_HAND = {
    "silu": torch.nn.functional.silu,
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "gelu_new": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
}


def _lape_activation_by_hand(model, ids, mask, layer):
    """act(x W_gate) for gated MLPs, act(x W_in) otherwise, from the projection's captured output."""
    arch = get_architecture(model)
    config = model.config
    name = (
        getattr(config, "hidden_act", None)
        or getattr(config, "activation_function", None)
        or getattr(config, "hidden_activation", None)
        or "gelu_new"  # BLOOM's fixed tanh-approximated GELU
    )
    projection = arch.ffn_gate or arch.ffn_in
    gate = _module_output(model, projection, layer, ids, mask).float()
    if arch.ffn_layout == "gate_up":  # Phi3MLP: gate, up = gate_up_proj(x).chunk(2, dim=-1)
        gate = gate.chunk(2, dim=-1)[0]
    return _BY_HAND[name](gate)


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_lape_active_counts_equal_brute_force(name):
    model = tiny_model(name)
    ids, mask = random_batch(3, 11, seed=4)
    got = score_batch(model, ids, mask, sites=("ffn", "ffn_active", "n_tokens"))
    assert set(got) == {"ffn", "ffn_active", "n_tokens"}
    assert torch.equal(got["n_tokens"], mask.sum(1))
    for layer in range(dimensions(model).n_layers):
        activation = _lape_activation_by_hand(model, ids, mask, layer)
        expected = ((activation > 0) & mask.bool()[..., None]).sum(dim=1).float()
        assert got["ffn_active"].dtype == torch.float32
        assert torch.equal(got["ffn_active"][:, layer], expected), f"{name} layer {layer}"
        # Not vacuous: some units are active on some but not all tokens.
        partial = (expected > 0) & (expected < mask.sum(1, keepdim=True))
        assert partial.any(), f"{name} layer {layer}: every unit is always or never active"


@pytest.mark.parametrize("name", ARCHITECTURE_NAMES)
def test_lape_counts_do_not_depend_on_padding_side_or_batching(name):
    model = tiny_model(name)
    ids, mask = random_batch(6, 13, seed=7, min_length=3)
    sites = ("ffn_active", "n_tokens")
    right = score_batch(model, ids, mask, sites=sites)
    left = score_batch(model, *to_padding_side(ids, mask, "left"), sites=sites)
    other_padding = torch.where(mask.bool(), ids, torch.full_like(ids, 50))
    repadded = score_batch(model, other_padding, mask, sites=sites)
    for site in sites:
        assert torch.equal(left[site], right[site]), site
        assert torch.equal(repadded[site], right[site]), site
    tokens = ids[4][mask[4].bool()][None]
    alone = score_batch(model, tokens, torch.ones_like(tokens), sites=sites)
    assert torch.equal(alone["ffn_active"][0], right["ffn_active"][4])


def test_lape_counts_leave_plnd_scores_and_default_outputs_unchanged():
    model = tiny_model("mistral")
    ids, mask = random_batch(2, 9, seed=1)
    plain = score_batch(model, ids, mask)
    assert set(plain) == set(langneurons.SITES)
    both = score_batch(model, ids, mask, sites=(*langneurons.SITES, "ffn_active", "n_tokens"))
    for site in langneurons.SITES:
        torch.testing.assert_close(both[site], plain[site], rtol=0, atol=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_score_documents_returns_lape_counts_in_input_order():
    from langneurons.scoring import score_documents

    model, tokenizer = tiny_model("gpt2"), word_tokenizer()
    texts = ["w1 w2 w3", "w4 w5 w6 w7 w8 w9 w10", "w11 w12", "w13 w14 w15 w16 w17"]
    sites = ("ffn_active", "n_tokens")
    out = score_documents(model, tokenizer, texts, sites=sites, batch_size=2, progress=False)
    assert out["n_tokens"].tolist() == [3, 7, 2, 5]
    for row, text in enumerate(texts):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        alone = score_batch(model, ids, torch.ones_like(ids), sites=sites)
        assert torch.equal(out["ffn_active"][row], alone["ffn_active"][0])
