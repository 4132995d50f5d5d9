"""Targeted fine-tuning: exact masking, sparse deltas, controls, baselines, bad input."""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import torch
from layout_probe import reference_mask, tiny_owned_entries
from models import VOCAB, tiny_model

from langneurons.architectures import SITES, dimensions, get_architecture
from langneurons.finetuning import (
    FinetuneConfig,
    FinetuneError,
    apply_sparse_delta,
    finetune,
    finetune_full,
    finetune_lora,
    finetune_neurons,
    load_sparse_delta,
    lora_target_modules,
    neuron_parameter_slices,
    save_result,
    save_sparse_delta,
)
from langneurons.neuronset import NeuronSet, NeuronSpace

FAST = dict(lr=1e-2, batch_size=4, grad_accum=2, epochs=2, n_docs=12, max_length=24, progress=False)


def _docs(n: int = 12, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (int(torch.randint(4, 20, (1,), generator=gen)),), generator=gen) for _ in range(n)]


def _neurons(model: torch.nn.Module) -> pd.DataFrame:
    """A set touching every site of every layer, incl. the last kv dim (GQA)."""
    dims = dimensions(model)
    picks = {
        "ffn": [1, 7, dims.intermediate_size - 1],
        "attn_q": [0, dims.head_dim + 3, dims.site_size("attn_q") - 1],
        "attn_k": [2, dims.site_size("attn_k") - 1],
        "attn_v": [dims.site_size("attn_v") // 2 + 1, dims.site_size("attn_v") - 1],
    }
    rows = [(layer, site, i) for layer in range(dims.n_layers) for site, idx in picks.items() for i in idx]
    frame = pd.DataFrame(rows, columns=["layer", "site", "index"])
    return frame.assign(language="sw", set_kind="specific", frequency=1.0, mean_importance=0.5)


def _reference_mask(name: str, model: torch.nn.Module, neurons: pd.DataFrame) -> dict[str, torch.Tensor]:
    """Which entries the neurons own, probed from the modeling code (independent of the layout code)."""
    rows = zip(neurons["layer"], neurons["site"], neurons["index"])
    return reference_mask(model, tiny_owned_entries(name), rows)


def _logits(model: torch.nn.Module, seed: int = 5) -> torch.Tensor:
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    "name", ["llama", "gpt2", "bloom", "gpt_neox", "qwen2", "opt", "gemma2", "gemma3", "phi3", "olmo2"]
)
def test_only_neuron_weights_change_bit_identical(name: str) -> None:
    model = tiny_model(name)
    base = copy.deepcopy(model)
    neurons = _neurons(model)
    config = FinetuneConfig(**FAST, weight_decay=0.1, schedule="linear", warmup_ratio=0.25)
    result = finetune(model, _docs(), config, method="targeted", neurons=neurons, target_language="sw")

    mask = _reference_mask(name, base, neurons)
    base_params = dict(base.named_parameters())
    changed_inside = 0
    for pname, param in model.named_parameters():
        outside = ~mask[pname]
        assert torch.equal(param[outside], base_params[pname][outside]), f"{pname} moved outside the mask"
        changed_inside += int((param[mask[pname]] != base_params[pname][mask[pname]]).sum())
        assert param.grad is None and param.requires_grad, "training state was not restored"
    assert changed_inside > 0
    assert result.record.trainable_params == sum(int(m.sum()) for m in mask.values())
    assert result.record.steps == 4 and result.record.final_loss is not None
    assert not model.training


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom", "gpt_neox", "phi3", "olmo2", "gemma3_multimodal"])
def test_lora_targets_the_modules_that_hold_each_site(name: str) -> None:
    """Per site, LoRA's targets are the layer modules whose weights the site's neurons own (layout probe)."""
    model = tiny_model(name)
    prefix = f"{get_architecture(model).layers}.0."
    for site in SITES:
        owned = [entries for (layer, s, _), entries in tiny_owned_entries(name).items() if layer == 0 and s == site]
        modules = {
            pname.removeprefix(prefix).rpartition(".")[0]
            for entries in owned
            for pname, mask in entries.items()
            if pname.endswith(".weight") and mask.any()
        }
        assert set(lora_target_modules(model, [site])) == modules, site


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom"])
def test_sparse_delta_reproduces_fine_tuned_logits(name: str, tmp_path) -> None:
    model = tiny_model(name)
    result = finetune(
        model,
        _docs(),
        FinetuneConfig(**FAST, weight_decay=0.01),
        method="targeted",
        neurons=_neurons(model),
        target_language="sw",
    )
    out = save_result(result, tmp_path / "run")

    fresh = tiny_model(name)
    assert not torch.equal(_logits(fresh), _logits(model))
    metadata = apply_sparse_delta(fresh, out / "delta.safetensors")
    assert torch.equal(_logits(fresh), _logits(model))
    for (pname, a), b in zip(fresh.named_parameters(), model.parameters()):
        assert torch.equal(a, b), pname
    assert metadata["method"] == "targeted" and json.loads(metadata["record"])["target_language"] == "sw"

    delta, _ = load_sparse_delta(out / "delta.safetensors")
    assert sum(values.numel() for _, _, values in delta.values()) <= result.record.trainable_params
    record = json.loads((out / "record.json").read_text())["record"]
    assert {
        "method",
        "target_language",
        "trainable_params",
        "n_docs",
        "tokens",
        "steps",
        "wall_s",
        "final_loss",
    } <= set(record)
    saved = NeuronSet.from_parquet(out / "neurons.parquet", NeuronSpace.of(model))
    keys = lambda f: set(zip(f["layer"], f["site"], f["index"]))  # noqa: E731
    assert saved.addresses() == keys(_neurons(model)) and saved == result.neurons


def test_sparse_delta_refuses_another_family(tmp_path) -> None:
    model = tiny_model("gpt2")
    result = finetune(model, _docs(), FinetuneConfig(**FAST), method="targeted", neurons=_neurons(model))
    out = save_result(result, tmp_path / "run")
    with pytest.raises(FinetuneError, match="not in the model"):
        apply_sparse_delta(tiny_model("llama"), out / "delta.safetensors")


def test_random_method_trains_the_sets_random_control() -> None:
    """The control has the target's count per (layer, site), none of its neurons, and depends on the seed only."""
    config = FinetuneConfig(**{**FAST, "epochs": 1, "n_docs": 4})
    neurons = _neurons(tiny_model("llama"))

    def control(seed: int) -> NeuronSet:
        model = tiny_model("llama")
        return finetune(model, _docs(4), config, method="random", neurons=neurons, control_seed=seed).neurons

    def counts(frame: pd.DataFrame) -> dict:
        return frame.groupby(["layer", "site"]).size().to_dict()

    drawn = control(3)
    keys = lambda f: set(zip(f["layer"], f["site"], f["index"]))  # noqa: E731
    assert counts(drawn.table) == counts(neurons)
    assert not drawn.addresses() & keys(neurons)
    assert drawn.set_kinds == ["random"] and list(drawn.table.columns) == list(neurons.columns)
    assert drawn == control(3) and drawn.addresses() != control(4).addresses()
    model = tiny_model("llama")
    half = dimensions(model).site_size("attn_k") // 2
    full = pd.DataFrame({"layer": 0, "site": "attn_k", "index": range(half + 1)})
    with pytest.raises(FinetuneError, match="neurons: .*no disjoint random set"):
        finetune(model, _docs(4), config, method="random", neurons=full)


def test_a_neuron_set_of_another_model_is_refused() -> None:
    small = NeuronSet([(0, "ffn", 1)], NeuronSpace(2, {"ffn": 8, "attn_q": 4, "attn_k": 4, "attn_v": 4}))
    with pytest.raises(FinetuneError, match="neurons: the neuron set belongs to a model with 2 layers"):
        finetune(tiny_model("llama"), _docs(4), FinetuneConfig(**FAST), method="targeted", neurons=small)


def _language(first: int, n_tokens: int, mult: int, n_docs: int, seed: int) -> list[torch.Tensor]:
    """A synthetic 'language': its own token range and a mostly deterministic successor rule."""
    gen = torch.Generator().manual_seed(seed)
    docs = []
    for _ in range(n_docs):
        x = [int(torch.randint(0, n_tokens, (1,), generator=gen))]
        for _ in range(23):
            noisy = float(torch.rand(1, generator=gen)) < 0.1
            x.append(int(torch.randint(0, n_tokens, (1,), generator=gen)) if noisy else (mult * x[-1] + 1) % n_tokens)
        docs.append(torch.tensor(x) + first)
    return docs


def _mean_loss(model: torch.nn.Module, docs: list[torch.Tensor]) -> float:
    ids = torch.stack(docs)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1)))


def test_targeted_finetuning_lowers_target_language_loss() -> None:
    lang_a = _language(3, 47, 5, 72, seed=1)
    lang_b = _language(50, 47, 7, 72, seed=2)
    model = tiny_model("llama")
    mixed = [d for pair in zip(lang_a[:48], lang_b[:48]) for d in pair]
    pretrain = FinetuneConfig(lr=3e-3, batch_size=8, grad_accum=1, n_docs=len(mixed), epochs=3, progress=False)
    finetune_full(model, mixed, pretrain)  # a little structure in both languages

    heldout_a = lang_a[60:]
    before = _mean_loss(model, heldout_a)
    neurons = [(layer, "ffn", i) for layer in range(3) for i in range(0, 48, 3)]
    neurons += [(layer, "attn_v", i) for layer in range(3) for i in range(0, 16, 2)]
    config = FinetuneConfig(lr=1e-2, batch_size=8, grad_accum=1, n_docs=48, epochs=2, progress=False)
    result = finetune_neurons(model, lang_a[12:60], neurons, config, target_language="a")
    assert _mean_loss(model, heldout_a) < before
    assert result.record.losses[-1] < result.record.losses[0]


def test_full_and_lora_baselines_change_model_and_lora_merges_consistently(tmp_path) -> None:
    config = FinetuneConfig(**FAST, weight_decay=0.01, lora_rank=4)
    neurons = _neurons(tiny_model("llama"))
    records = {}
    for method in ("targeted", "full", "lora", "none"):
        model = tiny_model("llama")
        result = finetune(model, _docs(), config, method=method, neurons=neurons)
        records[method] = result.record
        changed = not torch.equal(_logits(result.model), _logits(tiny_model("llama")))
        assert changed == (method != "none"), method
        out = save_result(result, tmp_path / method)
        assert (out / "record.json").exists()
    assert len({(r.n_docs, r.tokens) for r in records.values() if r.method != "none"}) == 1
    assert records["none"].steps == 0 and records["none"].n_docs == records["full"].n_docs
    assert records["lora"].trainable_params < records["full"].trainable_params
    assert (tmp_path / "full" / "model" / "config.json").exists()
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").exists()

    peft_model = finetune_lora(tiny_model("gpt2"), _docs(), config).model  # Conv1D: fan_in_fan_out
    unmerged = _logits(peft_model)
    merged = peft_model.merge_and_unload()
    torch.testing.assert_close(_logits(merged), unmerged, rtol=1e-5, atol=1e-5)


def test_accumulation_split_does_not_change_the_step() -> None:
    """Loss is summed over the window's tokens, so 1 x 4 and 2 x 2 micro-batches agree."""
    neurons = _neurons(tiny_model("llama"))
    models = []
    for batch, accum in ((4, 1), (2, 2)):
        model = tiny_model("llama")
        config = FinetuneConfig(lr=1e-2, batch_size=batch, grad_accum=accum, n_docs=12, progress=False)
        finetune(model, _docs(), config, method="targeted", neurons=neurons)
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lr", [0.0, -1e-4])
def test_bad_learning_rate_names_the_field(lr: float) -> None:
    with pytest.raises(FinetuneError, match=r"FinetuneConfig\.lr=.*positive"):
        FinetuneConfig(lr=lr)


def test_bad_neurons_name_the_field_and_fix() -> None:
    model = tiny_model("llama")
    config = FinetuneConfig(**FAST)
    with pytest.raises(FinetuneError, match="neuron set is empty"):
        finetune(model, _docs(), config, method="targeted", neurons=[])
    with pytest.raises(FinetuneError, match=r"neurons: .*out of range.*0\.\.47"):
        finetune(model, _docs(), config, method="targeted", neurons=[(0, "ffn", 48)])
    with pytest.raises(FinetuneError, match="layer 3 is out of range"):
        finetune(model, _docs(), config, method="targeted", neurons=[(3, "ffn", 0)])
    mixed = pd.concat([_neurons(model), _neurons(model).assign(language="de")])
    with pytest.raises(FinetuneError, match="filter it to one language"):
        finetune(model, _docs(), config, method="random", neurons=mixed)
    with pytest.raises(FinetuneError, match="n_docs"):
        finetune(model, _docs(3), config, method="full")
    with pytest.raises(FinetuneError, match="method="):
        finetune(model, _docs(), config, method="sparse")  # type: ignore[arg-type]


# ---- the optimiser step, weight decay and the sparse delta, against hand-written references ----------------


def _llama_neurons() -> list[tuple[int, str, int]]:
    """FFN units and value dims of a tiny Llama, as (layer, site, index)."""
    return [(layer, "ffn", k) for layer in range(3) for k in (1, 7, 47)] + [(1, "attn_v", 0), (2, "attn_v", 15)]


def _linear_warmup_factor(step: int, warmup: int, total: int) -> float:
    """The linear schedule with warmup, as its definition reads (0 -> 1 over warmup, then down to 0 at total)."""
    return step / warmup if step < warmup else (total - step) / (total - warmup)


def _reference_adamw(
    model: torch.nn.Module,
    docs: list[torch.Tensor],
    mask: dict[str, torch.Tensor],
    *,
    lr: float,
    weight_decay: float,
    steps: int,
    warmup: int,
    max_grad_norm: float | None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> dict[str, torch.Tensor]:
    """Full-batch AdamW on the masked entries only, in float64, one document at a time (no padding).

    Per step t (0-based) with lr_t = lr * schedule(t): gradient of the mean next-token loss, kept on the
    mask; clipped to ``max_grad_norm`` over the masked entries; then, entry by entry,
    p <- p (1 - lr_t wd) - lr_t m_hat / (sqrt(v_hat) + eps).
    """
    reference = copy.deepcopy(model).double()
    params = dict(reference.named_parameters())
    moments = {name: (torch.zeros_like(params[name]), torch.zeros_like(params[name])) for name in mask}
    n_targets = sum(doc.numel() - 1 for doc in docs)
    for step in range(steps):
        lr_t = lr * _linear_warmup_factor(step, warmup, steps)
        reference.zero_grad()
        loss = sum(
            torch.nn.functional.cross_entropy(reference(input_ids=doc[None]).logits[0, :-1], doc[1:], reduction="sum")
            for doc in docs
        )
        (loss / n_targets).backward()
        grads = {name: torch.where(m, params[name].grad, 0.0) for name, m in mask.items()}
        if max_grad_norm is not None:
            norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
            grads = {name: g * min(1.0, max_grad_norm / (norm + 1e-6)) for name, g in grads.items()}
        with torch.no_grad():
            for name, m in mask.items():
                first, second = moments[name]
                first.mul_(betas[0]).add_((1 - betas[0]) * grads[name])
                second.mul_(betas[1]).add_((1 - betas[1]) * grads[name] ** 2)
                first_hat = first / (1 - betas[0] ** (step + 1))
                second_hat = second / (1 - betas[1] ** (step + 1))
                updated = params[name] * (1 - lr_t * weight_decay) - lr_t * first_hat / (second_hat.sqrt() + eps)
                params[name].copy_(torch.where(m, updated, params[name]))
    return {name: p.detach() for name, p in params.items()}


@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_targeted_steps_equal_a_hand_written_adamw_with_scheduled_decay(max_grad_norm) -> None:
    """Five full-batch steps of linear warmup + decay and strong weight decay, in float64 on both sides."""
    model = tiny_model("llama", dtype=torch.float64)
    base = copy.deepcopy(model)
    docs = _docs(4, seed=3)
    neurons = _llama_neurons()
    config = FinetuneConfig(
        lr=1e-2, batch_size=2, grad_accum=2, n_docs=4, epochs=5, max_length=64, schedule="linear",
        warmup_ratio=0.2, weight_decay=5.0, max_grad_norm=max_grad_norm, progress=False,
    )  # fmt: skip
    finetune_neurons(model, docs, neurons, config)
    mask = reference_mask(base, tiny_owned_entries("llama"), neurons)
    expected = _reference_adamw(
        base, docs, mask, lr=1e-2, weight_decay=5.0, steps=5, warmup=1, max_grad_norm=max_grad_norm
    )
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=1e-9, atol=1e-12, msg=name)
    if max_grad_norm is not None:  # the clipped run must differ, or the clipping case tested nothing
        unclipped = _reference_adamw(base, docs, mask, lr=1e-2, weight_decay=5.0, steps=5, warmup=1, max_grad_norm=None)
        assert any(not torch.allclose(unclipped[n], expected[n], rtol=1e-6) for n in mask)


def test_sparse_delta_stores_exactly_the_changed_slices(tmp_path) -> None:
    """Change chosen rows/columns by hand; the file holds those positions, no unchanged one, with their values."""
    model = tiny_model("llama")
    neurons = _llama_neurons()
    slices = neuron_parameter_slices(model, neurons)
    changed = {
        "model.layers.0.mlp.up_proj.weight": (0, [7]),  # of rows 1, 7, 47
        "model.layers.2.mlp.down_proj.weight": (1, [1, 47]),  # of columns 1, 7, 47
        "model.layers.1.self_attn.v_proj.weight": (0, [0]),  # the only row
    }
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, (dim, positions) in changed.items():
            for position in positions:
                params[name].select(dim, position)[3] += 0.5  # a single entry of the slice
    path = save_sparse_delta(model, slices, tmp_path / "delta.safetensors", metadata={"method": "targeted"})
    delta, _ = load_sparse_delta(path)
    assert {name: (dim, index.tolist()) for name, (dim, index, _) in delta.items()} == changed
    for name, (dim, index, values) in delta.items():
        assert torch.equal(values, params[name].detach().index_select(dim, index)), name


def test_bf16_updates_below_bf16_resolution_accumulate_in_fp32_masters(tmp_path, monkeypatch) -> None:
    """Each step moves a weight by about lr = 2e-4, a tenth of bf16's half-spacing (2^-9) at |w| in [0.5, 1).

    AdamW on the bf16 weights themselves rounds every such step away, so nothing would ever move; with fp32
    master copies the steps add up and the weights move, in the direction the same run in fp32 moves them.
    """
    model = tiny_model("llama", dtype=torch.bfloat16)
    neurons = _llama_neurons()
    mask = reference_mask(model, tiny_owned_entries("llama"), neurons)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            size = 0.5 + 0.5 * torch.rand(param.shape, generator=gen)
            sign = torch.where(torch.rand(param.shape, generator=gen) < 0.5, -1.0, 1.0)
            param.copy_(torch.where(mask[name], (size * sign).to(param.dtype), param))
    start = copy.deepcopy(model)
    in_fp32 = copy.deepcopy(model).float()
    optimised = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            params = list(params)
            optimised.append(params)
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    config = FinetuneConfig(
        lr=2e-4, batch_size=4, grad_accum=1, n_docs=4, epochs=24, max_length=32, schedule="constant",
        max_grad_norm=None, progress=False,
    )  # fmt: skip
    result = finetune_neurons(model, _docs(4, seed=1), neurons, config)
    finetune_neurons(in_fp32, _docs(4, seed=1), neurons, config)

    n_masked = sum(int(m.sum()) for m in mask.values())
    assert sum(p.numel() for p in optimised[0]) == n_masked == result.record.trainable_params
    assert all(p.dtype == torch.float32 for p in optimised[0])  # masters of the slices, not of whole matrices
    moved = agreeing = 0
    for (name, param), before, after_fp32 in zip(model.named_parameters(), start.parameters(), in_fp32.parameters()):
        assert param.dtype == torch.bfloat16
        inside = mask[name]
        assert torch.equal(param[~inside], before[~inside]), f"{name} moved outside the mask"
        step_bf16 = (param[inside] - before[inside]).float()
        step_fp32 = after_fp32[inside] - before[inside].float()
        moved += int((step_bf16 != 0).sum())
        agreeing += int((step_bf16 * step_fp32 > 0).sum())
    assert moved > n_masked // 2
    assert agreeing >= 0.95 * moved  # (the bf16 forward pass gives slightly different gradients)

    out = save_result(result, tmp_path / "run")
    apply_sparse_delta(start, out / "delta.safetensors")
    for (name, a), b in zip(start.named_parameters(), model.parameters()):
        assert torch.equal(a, b), name


def test_bf16_full_finetuning_accumulates_small_steps_too() -> None:
    """Full fine-tuning in bf16: steps of ~1e-5 are below half the bf16 spacing (>= 2^-15) at |w| in [2^-6, 2^-4),
    so only a float32 master makes those weights move; AdamW on the bf16 weights would leave them all as they are."""
    model = tiny_model("llama", dtype=torch.bfloat16)
    start = copy.deepcopy(model)
    config = FinetuneConfig(
        lr=1e-5, batch_size=4, grad_accum=1, n_docs=4, epochs=30, max_length=32, schedule="constant",
        max_grad_norm=None, progress=False,
    )  # fmt: skip
    finetune_full(model, _docs(4, seed=2), config)
    moved = total = 0
    for param, before in zip(model.parameters(), start.parameters()):
        assert param.dtype == torch.bfloat16
        band = (before.abs() >= 2**-6) & (before.abs() < 2**-4)
        moved += int((param[band] != before[band]).sum())
        total += int(band.sum())
    assert total > 1000 and moved > total // 2
