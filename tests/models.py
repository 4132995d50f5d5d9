"""Tiny random-init models, one per supported architecture (no download).

Each config exercises what makes its family different: grouped-query
attention, attention biases, logit soft-capping and sliding windows, partial
rotary embeddings, fused projections, ALiBi, query/key norms per head or over
the whole projection, two rotary bases, scaled rotary embeddings (LongRoPE,
YaRN).
"""

from __future__ import annotations

import torch
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    SiglipVisionConfig,
)

VOCAB = 97
SPECIAL_TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
HIDDEN = 32
LAYERS = 3


def _llama_like_kwargs() -> dict:
    return dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=48,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        **SPECIAL_TOKENS,
    )


def _gemma3_text_config(**overrides) -> Gemma3TextConfig:
    """Gemma-3's text model in small: one kv head, head_dim > hidden / heads, both attention kinds.

    The sliding window (4) is shorter than the test documents, and the two layer kinds rotate with
    different bases, so a mix-up of masks or rotary tables changes the scores.
    """
    kwargs = _llama_like_kwargs() | dict(
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=12,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000.0},
        },
    )
    return Gemma3TextConfig(**kwargs | overrides)


def _configs() -> dict:
    return {
        "llama": (LlamaForCausalLM, LlamaConfig(**_llama_like_kwargs())),
        "mistral": (MistralForCausalLM, MistralConfig(**_llama_like_kwargs(), sliding_window=None)),
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(**_llama_like_kwargs(), use_sliding_window=False)),
        "gemma2": (
            Gemma2ForCausalLM,
            Gemma2Config(
                **_llama_like_kwargs(),
                head_dim=16,
                query_pre_attn_scalar=12,
                attn_logit_softcapping=3.0,
                final_logit_softcapping=30.0,
                sliding_window=5,
            ),
        ),
        "gemma3": (Gemma3ForCausalLM, _gemma3_text_config()),
        # what AutoModelForCausalLM makes of a multimodal Gemma-3 checkpoint; soft-capping on to
        # exercise it together with the query/key norms
        "gemma3_multimodal": (
            Gemma3ForConditionalGeneration,
            Gemma3Config(
                text_config=_gemma3_text_config(num_key_value_heads=2, attn_logit_softcapping=3.0),
                vision_config=SiglipVisionConfig(
                    hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                    image_size=16, patch_size=8,
                ),
                mm_tokens_per_image=4,
            ),
        ),
        # norm epsilons of the order of the tiny models' mean squared query/key, so that the
        # scores' norm inversion must get epsilon right
        "qwen3": (
            Qwen3ForCausalLM,
            Qwen3Config(**_llama_like_kwargs(), head_dim=16, attention_bias=True, rms_norm_eps=1e-2),
        ),
        "olmo2": (Olmo2ForCausalLM, Olmo2Config(**_llama_like_kwargs(), attention_bias=True, rms_norm_eps=1e-2)),
        # fused [q | k | v] with grouped-query sizes, fused [gate | up], partial rotary, LongRoPE
        # (max_position_embeddings / original = 4, so cos and sin carry an attention factor of 1.18)
        "phi3": (
            Phi3ForCausalLM,
            Phi3Config(
                **_llama_like_kwargs(),
                original_max_position_embeddings=32,
                rope_parameters={
                    "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                    "short_factor": [1.0, 1.5], "long_factor": [2.0, 3.0],
                },
            ),
        ),
        "gpt2": (
            GPT2LMHeadModel,
            GPT2Config(
                **SPECIAL_TOKENS, vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=128, n_inner=48
            ),
        ),
        "gpt_neox": (
            GPTNeoXForCausalLM,
            GPTNeoXConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=4,
                intermediate_size=48,
                rotary_pct=0.5,
                **SPECIAL_TOKENS,
                max_position_embeddings=128,
            ),
        ),
        "bloom": (
            BloomForCausalLM,
            BloomConfig(**SPECIAL_TOKENS, vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=4),
        ),
        "opt": (
            OPTForCausalLM,
            OPTConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=4,
                ffn_dim=48,
                max_position_embeddings=128,
                word_embed_proj_dim=HIDDEN,
                **SPECIAL_TOKENS,
            ),
        ),
    }


ARCHITECTURE_NAMES: tuple[str, ...] = tuple(_configs())


def _variants() -> dict:
    """Variants of a family that only the brute-force scoring tests need."""
    return {
        # YaRN scaling folds an attention factor (1.14 at factor 4) into cos and sin
        "llama_yarn": (
            LlamaForCausalLM,
            LlamaConfig(
                **_llama_like_kwargs(),
                rope_parameters={
                    "rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 32,
                },
            ),
        ),
    }


VARIANT_NAMES: tuple[str, ...] = tuple(_variants())


def tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A tiny random-init model of family ``name``, in eval mode."""
    model_class, config = (_configs() | _variants())[name]
    torch.manual_seed(seed)
    model = model_class(config).to(dtype)
    # Random init leaves LayerNorm weights at 1 and biases at 0; perturb every
    # parameter so that no term of the maths hides behind an identity.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def random_batch(
    batch: int, length: int, seed: int = 0, min_length: int | None = None, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a padding mask of documents of different lengths."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length or max(2, length // 2), length + 1, (batch,), generator=gen)
    lengths[0] = length
    ids = torch.randint(3, VOCAB, (batch, length), generator=gen)
    positions = torch.arange(length)
    if padding_side == "right":
        mask = positions[None, :] < lengths[:, None]
    else:
        mask = positions[None, :] >= (length - lengths)[:, None]
    ids = torch.where(mask, ids, torch.zeros_like(ids))
    return ids, mask.long()


def to_padding_side(ids: torch.Tensor, mask: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-pad a batch to the given side, keeping every document's tokens."""
    out_ids, out_mask = torch.zeros_like(ids), torch.zeros_like(mask)
    for row in range(ids.shape[0]):
        tokens = ids[row][mask[row].bool()]
        n = tokens.numel()
        if side == "right":
            out_ids[row, :n], out_mask[row, :n] = tokens, 1
        else:
            out_ids[row, ids.shape[1] - n :], out_mask[row, ids.shape[1] - n :] = tokens, 1
    return out_ids, out_mask


def word_tokenizer():
    """A word-level tokenizer over the tiny models' vocabulary: text "w5 w17" is tokens [5, 17]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>")


def save_tiny_model(path, name: str = "llama") -> str:
    """A tiny model and its word tokenizer saved like a hub model, for steps that load by path."""
    word_tokenizer().save_pretrained(path)
    tiny_model(name).save_pretrained(path)
    return str(path)


#: The tiny GGUF's vocabulary: three special tokens, then the 94 printable ASCII characters "!".."~",
#: one token each (a byte-level vocabulary without merges: "ab" is tokens [a, b]).
GGUF_TOKENS = ("<pad>", "<s>", "</s>", *(chr(code) for code in range(33, 127)))


def _llama_cpp_permute(weight, n_heads: int):
    """llama.cpp's convert_hf_to_gguf order of q/k rows: each head's two rotary halves interleaved."""
    return (
        weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def save_tiny_gguf(path, model) -> str:
    """Write a Llama ``model`` as an F32 GGUF file, the way llama.cpp's converter does, with a tokenizer."""
    import gguf
    import numpy as np

    config = model.config
    assert len(GGUF_TOKENS) == config.vocab_size
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(list(GGUF_TOKENS))
    writer.add_token_scores([0.0] * len(GGUF_TOKENS))
    writer.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(GGUF_TOKENS) - 3))
    writer.add_pad_token_id(SPECIAL_TOKENS["pad_token_id"])
    writer.add_bos_token_id(SPECIAL_TOKENS["bos_token_id"])
    writer.add_eos_token_id(SPECIAL_TOKENS["eos_token_id"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        module, kind = name.rsplit(".", 1)
        array = tensor.detach().float().numpy().astype(np.float32)
        if module.endswith("self_attn.q_proj"):
            array = _llama_cpp_permute(array, config.num_attention_heads)
        elif module.endswith("self_attn.k_proj"):
            array = _llama_cpp_permute(array, config.num_key_value_heads)
        writer.add_tensor(f"{names.get_name(module)}.{kind}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)
