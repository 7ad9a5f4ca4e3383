"""Small configs covering every model option, and models with random weights built
without compiling initialisers; shared by tests/ and parity_tests/."""

from __future__ import annotations

from typing import Callable

import numpy as np
from flax import nnx

from mylm_jax.config import ModelConfig
from mylm_jax.model.params import load_flat_params, param_shapes

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


def random_params(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Random float32 values for every parameter, so that no part of the math is trivial.

    Norm scales U(0.5, 1.5) and biases N(0, 0.1) (not 1 and 0, so bugs in them show);
    embeddings N(0, 0.3); matmul kernels N(0, 1/fan_in) (activations stay O(1), attention
    and routing are far from uniform).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("scale"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif name in ("embed", "pos_embed"):
            value = rng.normal(0.0, 0.3, shape)
        else:
            if name.endswith("out.kernel"):  # attention out [H, d, D]
                fan_in = shape[0] * shape[1]
            elif name.endswith(("w_in", "w_out")):  # experts [E, in, ...]
                fan_in = shape[1]
            else:  # [in, ...]: q, kv, gate, fc, gate_up, proj, router, lm_head
                fan_in = shape[0]
            value = rng.normal(0.0, fan_in ** -0.5, shape)
        out[name] = value.astype(np.float32)
    return out


def build_jax(make: Callable[[], nnx.Module], seed: int) -> nnx.Module:
    """A JAX module with `random_params` weights.

    The module is built abstractly (nnx.eval_shape) and then filled: running its own
    initialisers eagerly would compile a random-number kernel per shape, seconds per test.
    """
    module = nnx.eval_shape(make)
    load_flat_params(module, random_params(param_shapes(module), seed))
    return module
