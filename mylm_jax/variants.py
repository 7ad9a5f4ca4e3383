"""The model variants in one table: two families, and the named combinations built from them
that the tests, the parity suite, the studies, the benchmarks and configs/*_tiny.yaml use.

The families (a few settings of `ModelConfig`; sizes are added by whoever uses them):

    GPT2         learned positions, LayerNorm, GELU MLP, biases (the 2019 baseline)
    modern(H)    RoPE, RMSNorm, SwiGLU MLP, no biases, grouped-query attention with
                 2 query heads per kv head (H // 2 kv heads for H query heads; Llama-style)

The named variants, three sets:

    VARIANTS          12 small models that between them switch on every model option; the
                      tests and the parity suite run each. `variant(name, **overrides)`
                      is one at the SMALL size as a ModelConfig, `small_config(**settings)`
                      any model at that size.
    STUDY_VARIANTS    the designs the studies compare (scripts/compare_variants.py, ...):
                      `variant_model(name, d_model, n_layers, n_heads)` is the model section
                      (a dict) at any size.
    CONFIG_VARIANTS   the model sections of configs/<name>.yaml at the TINY size:
                      `config_variant(name)`. Each YAML names its entry in a `# variant:` line
                      and tests/test_variants.py checks that the two agree.

This module imports nothing but `mylm_jax.config` (no jax): scripts read it too.
"""

from __future__ import annotations

from mylm_jax.config import ConfigError, ModelConfig

# --------------------------------------------------------------------------- families

GPT2 = dict(position="learned", norm="layernorm", mlp="gelu", bias=True)


def modern(n_heads: int) -> dict:
    """The modern family for a model with n_heads query heads (GQA: 2 query heads per kv head)."""
    return dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_heads=max(1, n_heads // 2))


# --------------------------------------------------------------------------- test variants

SMALL = dict(vocab_size=128, max_seq_len=32, d_model=32, n_layers=2, n_heads=4)
MODERN = modern(SMALL["n_heads"])  # n_kv_heads=2

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
    """A model at the SMALL size (vocab 128, 32 positions, d_model 32, 2 layers, 4 heads)."""
    return ModelConfig(**{**SMALL, **overrides})


def variant(name: str, **overrides) -> ModelConfig:
    """Test variant `name` at the SMALL size; overrides win over both."""
    return small_config(**{**VARIANTS[name], **overrides})


# --------------------------------------------------------------------------- study variants

STUDY_VARIANTS = ("gpt2", "modern", "gated_headwise", "gated_elementwise", "moe")


def variant_model(name: str, d_model: int = 128, n_layers: int = 4, n_heads: int = 4) -> dict:
    """The model section of a study variant at the given size:

        gpt2               the GPT2 family
        modern             the modern family
        gated_headwise     modern + Qwen's sigmoid gate on each head's output (one scalar per head)
        gated_elementwise  modern + the gate per output element
        moe                modern with 4 experts, top-2, each expert half the dense MLP's width:
                           the active matmul weights per token match the dense modern model's
    """
    size = dict(d_model=d_model, n_layers=n_layers, n_heads=n_heads)
    dense = dict(size, **modern(n_heads))
    if name == "gpt2":
        return dict(size, **GPT2)
    if name == "modern":
        return dense
    if name in ("gated_headwise", "gated_elementwise"):
        return dict(dense, attn_gate=name.removeprefix("gated_"))
    if name == "moe":
        dense_ff = ModelConfig(**dense).ffn_dim  # the SwiGLU width the dense model would have
        return dict(dense, n_experts=4, top_k=2, moe_d_ff=max(16, dense_ff // 2))
    raise ConfigError(f"unknown variant {name!r} (expected one of {', '.join(STUDY_VARIANTS)})")


# --------------------------------------------------------------------------- configs/*_tiny.yaml

TINY = dict(vocab_size=4096, max_seq_len=256, d_model=256, n_layers=4, n_heads=4)
_TINY_MODERN = dict(modern(TINY["n_heads"]), norm_eps=1e-6, tie_embeddings=False)

CONFIG_VARIANTS = {  # settings at their ModelConfig defaults are left out
    "gpt2_tiny": dict(GPT2),
    "modern_tiny": dict(_TINY_MODERN, qk_norm=True),
    "gated_tiny": dict(_TINY_MODERN, attn_gate="headwise"),
    "moe_tiny": dict(_TINY_MODERN, n_experts=8, n_shared_experts=1, top_k=2, moe_d_ff=256,
                     moe_layers=(1, 3)),  # router_renormalize, moe_impl=blocked: the defaults
}


def config_variant(name: str) -> ModelConfig:
    """The model section configs/<name>.yaml must hold."""
    return ModelConfig(**{**TINY, **CONFIG_VARIANTS[name]})
