"""Small configs covering every model option; shared by tests/ and parity_tests/."""

from mylm_jax.config import ModelConfig

SMALL = dict(vocab_size=128, max_seq_len=32, d_model=32, n_layers=2, n_heads=4)
MODERN = dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_heads=2)

VARIANTS = {
    "gpt2": dict(),
    "gpt2_untied_nobias": dict(tie_embeddings=False, bias=False),
    "no_position": dict(position="none"),
    "modern": dict(MODERN),
    "modern_qknorm_mha": dict(MODERN, n_kv_heads=None, qk_norm=True, rope_theta=500.0),
    "modern_mqa_layernorm": dict(MODERN, n_kv_heads=1, norm="layernorm"),
    "gated_headwise": dict(MODERN, attn_gate="headwise"),
    "gated_elementwise": dict(attn_gate="elementwise"),
    "reference_attention": dict(MODERN, attention_impl="reference", qk_norm=True),
    "moe_gelu": dict(n_experts=4, top_k=2),
    "moe_swiglu_shared": dict(MODERN, n_experts=4, top_k=1, n_shared_experts=1, moe_layers=(1,),
                              router_renormalize=False, moe_d_ff=48),
    "moe_ragged": dict(MODERN, n_experts=4, top_k=2, moe_impl="ragged", tie_embeddings=False),
}


def variant(name: str, **overrides) -> ModelConfig:
    return ModelConfig(**{**SMALL, **VARIANTS[name], **overrides})
