"""Layer-by-layer parity: each JAX layer against its torch twin with identical weights.

Every test builds the JAX layer, gives it random weights, converts them into the
torch layer and compares the outputs in float32 (tolerances in tolerances.py).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from mylm_jax.model import layers as jl
from mylm_jax.model.attention import Attention as JaxAttention
from mylm_jax.model.moe import MoE as JaxMoE
from mylm_jax.model.params import build_with_random_params
from mylm_jax.variants import small_config
from mylm_torch import model as tm
from parity_tests.conftest import copy_to_torch, flat_aux, packed_batch
from parity_tests.tolerances import AUX_REL, LAYER_ABS, NORM_ABS, ROPE_ABS, compare

B, T = 2, 16


def _inputs(cfg, seed=0, scale=1.0, shift=0.0):
    x_ND = np.random.default_rng(seed).normal(shift, scale, (B * T, cfg.d_model)).astype(np.float32)
    return jnp.asarray(x_ND), torch.from_numpy(x_ND)


# --------------------------------------------------------------------------- norms

@pytest.mark.parametrize("norm,bias,eps", [
    ("layernorm", True, 1e-5), ("layernorm", False, 1e-6), ("rmsnorm", True, 1e-5), ("rmsnorm", False, 1e-6),
])
def test_norm(norm, bias, eps):
    cfg = small_config(d_model=64, norm=norm, bias=bias, norm_eps=eps)
    jax_norm = build_with_random_params(lambda: jl.make_norm(cfg, cfg.d_model), seed=1)
    torch_norm = tm.make_norm(cfg, cfg.d_model)
    copy_to_torch(jax_norm, torch_norm, cfg, "final_norm")
    x_jax, x_torch = _inputs(cfg, scale=3.0, shift=1.0)  # non-zero mean: centring matters
    compare(f"{norm} bias={bias}", torch_norm(x_torch), jax_norm(x_jax), abs_tol=NORM_ABS)


# --------------------------------------------------------------------------- RoPE

@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("positions", ["arange", "packed", "large"])
def test_rope(theta, positions):
    d, H = 16, 4
    if positions == "arange":
        pos_BT = np.broadcast_to(np.arange(T), (B, T))
    elif positions == "packed":
        pos_BT = packed_batch(B, T)[1]
    else:  # far into a long context
        pos_BT = np.random.default_rng(2).integers(0, 256, (B, T))
    pos_BT = np.ascontiguousarray(pos_BT, dtype=np.int32)
    x = np.random.default_rng(3).normal(size=(B, T, H, d)).astype(np.float32)
    y_jax = jl.rope(jnp.asarray(x), jnp.asarray(pos_BT), theta)
    y_torch = tm.apply_rope(torch.from_numpy(x), *tm.rope_cos_sin(torch.from_numpy(pos_BT), d, theta))
    compare(f"rope theta={theta} {positions}", y_torch, y_jax, abs_tol=ROPE_ABS)


# --------------------------------------------------------------------------- attention

ATTENTION_CASES = {
    "mha_layernorm_bias": dict(position="rope", norm="layernorm", bias=True),
    "mha_learned_positions": dict(position="learned"),  # no RoPE inside attention
    "gqa": dict(position="rope", norm="rmsnorm", bias=False, n_kv_heads=2),
    "mqa": dict(position="rope", norm="rmsnorm", bias=False, n_kv_heads=1),
    "qk_norm_layernorm": dict(position="rope", norm="layernorm", bias=True, qk_norm=True),
    "qk_norm_rmsnorm_gqa": dict(position="rope", norm="rmsnorm", bias=False, qk_norm=True, n_kv_heads=2),
    "gate_headwise": dict(position="rope", attn_gate="headwise", bias=True, n_kv_heads=2),
    "gate_elementwise": dict(position="rope", attn_gate="elementwise", bias=True),
}


@pytest.mark.parametrize("packed", [False, True], ids=["causal", "packed"])
@pytest.mark.parametrize("impl", ["reference", "dot_product", "blockwise"])
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention(case, impl, packed):
    # attention_block=5 does not divide T: the last query block is shorter.
    cfg = small_config(d_model=64, attention_impl=impl, attention_block=5, rope_theta=1000.0,
                       **ATTENTION_CASES[case])
    jax_attn = build_with_random_params(lambda: JaxAttention(cfg, nnx.Rngs(0)), seed=4)
    torch_attn = tm.Attention(cfg)
    copy_to_torch(jax_attn, torch_attn, cfg, "blocks.0.attn")
    x_jax, x_torch = _inputs(cfg, seed=5)
    if packed:
        seg_BT, pos_BT = packed_batch(B, T, seed=6)
    else:
        seg_BT, pos_BT = None, np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy()
    y_jax = jax_attn(x_jax, B, T, jnp.asarray(pos_BT), None if seg_BT is None else jnp.asarray(seg_BT))

    pos_t = torch.from_numpy(pos_BT)
    rope = tm.rope_cos_sin(pos_t, cfg.head_dim, cfg.rope_theta) if cfg.position == "rope" else None
    mask = None if seg_BT is None else tm.attention_mask(torch.from_numpy(seg_BT))
    y_torch = torch_attn(x_torch, B, T, rope, mask)
    compare(f"attention {case} {impl} packed={packed}", y_torch, y_jax, abs_tol=LAYER_ABS)


# --------------------------------------------------------------------------- MLP

@pytest.mark.parametrize("mlp,bias", [("gelu", True), ("gelu", False), ("swiglu", True), ("swiglu", False)])
def test_mlp(mlp, bias):
    cfg = small_config(d_model=64, mlp=mlp, bias=bias)
    jax_mlp = build_with_random_params(lambda: jl.MLP(cfg, cfg.ffn_dim, nnx.Rngs(0)), seed=7)
    torch_mlp = tm.MLP(cfg, cfg.ffn_dim)
    copy_to_torch(jax_mlp, torch_mlp, cfg, "blocks.0.mlp")
    x_jax, x_torch = _inputs(cfg, seed=8)
    compare(f"mlp {mlp} bias={bias}", torch_mlp(x_torch), jax_mlp(x_jax), abs_tol=LAYER_ABS)


# --------------------------------------------------------------------------- MoE

MOE_CASES = {
    "gelu_renorm": dict(mlp="gelu", bias=True, n_experts=4, top_k=2),
    "gelu_top1": dict(mlp="gelu", bias=True, n_experts=4, top_k=1, router_renormalize=False),
    "swiglu_no_renorm": dict(mlp="swiglu", bias=False, n_experts=8, top_k=2, router_renormalize=False),
    "swiglu_shared": dict(mlp="swiglu", bias=True, n_experts=4, top_k=2, n_shared_experts=2, moe_d_ff=48),
}


@pytest.mark.parametrize("padding", [False, True], ids=["all_valid", "padding"])
@pytest.mark.parametrize("impl", ["dense", "ragged", "blocked"])
@pytest.mark.parametrize("case", list(MOE_CASES))
def test_moe(case, impl, padding):
    cfg = small_config(d_model=64, moe_impl=impl, moe_block_rows=8, **MOE_CASES[case])
    jax_moe, torch_moe = build_with_random_params(lambda: JaxMoE(cfg, nnx.Rngs(0)), seed=9), tm.MoE(cfg)
    copy_to_torch(jax_moe, torch_moe, cfg, "blocks.0.mlp")
    x_jax, x_torch = _inputs(cfg, seed=10)
    # segment id 0 = padding: its tokens still get an output but are left out of aux stats
    valid_N = packed_batch(B, T, seed=11)[0].reshape(-1) != 0 if padding else None
    y_jax, aux_jax = jax_moe(x_jax, None if valid_N is None else jnp.asarray(valid_N))
    y_torch, aux_torch = torch_moe(x_torch, None if valid_N is None else torch.from_numpy(valid_N))

    name = f"moe {case} {impl} padding={padding}"
    compare(f"{name} output", y_torch, y_jax, abs_tol=LAYER_ABS)
    aux_torch, aux_jax = flat_aux(aux_torch), flat_aux(aux_jax)
    assert set(aux_torch) == set(aux_jax) == {"losses.load_balance", "losses.router_z", "metrics.expert_load"}
    for key in aux_jax:
        compare(f"{name} {key}", aux_torch[key], aux_jax[key], rel_tol=AUX_REL)
