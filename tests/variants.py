"""Small configs covering every model option; one table for tests/ and parity_tests/."""

from mylm_jax.config import ModelConfig

SMALL = dict(vocab_size=128, max_seq_len=32, d_model=32, n_layers=2, n_heads=4)
GPT2 = dict(position="learned", norm="layernorm", mlp="gelu", bias=True)
MODERN = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_heads=2)

VARIANTS = {
    "gpt2": dict(GPT2),
    "gpt2_untied_nobias": dict(GPT2, tie_embeddings=False, bias=False),
    "no_position": dict(GPT2, position="none"),
    "modern": dict(MODERN),
    "modern_qknorm_mha": dict(MODERN, n_kv_heads=None, qk_norm=True, rope_theta=500.0),
    "modern_mqa_layernorm_untied": dict(MODERN, n_kv_heads=1, norm="layernorm", tie_embeddings=False),
    "gated_headwise": dict(MODERN, attn_gate="headwise"),
    "gated_elementwise": dict(GPT2, attn_gate="elementwise", qk_norm=True),  # LayerNorm QK-norm + biases
    "reference_attention": dict(MODERN, attention_impl="reference", qk_norm=True),
    "moe_gelu": dict(GPT2, n_experts=4, top_k=2, moe_impl="dense"),
    "moe_swiglu_shared": dict(MODERN, n_layers=3, n_experts=4, top_k=2, n_shared_experts=1,
                              moe_layers=(0, 2), router_renormalize=False, moe_d_ff=48),  # blocked
    "moe_ragged": dict(MODERN, n_experts=4, top_k=2, moe_impl="ragged", tie_embeddings=False),
}


def small_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**SMALL, **overrides})


def variant(name: str, **overrides) -> ModelConfig:
    return small_config(**{**VARIANTS[name], **overrides})
