"""Parameter count and training FLOPs per token, from the config alone (no jax).

`param_count(cfg)` must equal the number of scalars the model actually creates; a
test checks it for every variant. `flops_per_token(cfg, T)` follows the PaLM
appendix-B convention used by nanoGPT's MFU:

    training FLOPs/token = 6 * (matmul weights a token passes through)
                         + 12 * n_layers * n_heads * head_dim * T

6 = 2 (multiply + add) x 3 (forward, and backward for activations and weights).
The second term is QK^T and PV over the full T x T square; causal attention
actually needs about half of it, but the convention counts all (so MFU figures
compare across codebases). Embedding lookups, norms and biases are not counted;
the LM head is, tied or not. For MoE only the k routed experts a token uses count.
"""

from __future__ import annotations

from mylm_jax.config import ModelConfig


def _norm_params(cfg: ModelConfig, dim: int) -> int:
    return dim * (2 if cfg.norm == "layernorm" and cfg.bias else 1)


def _attention_params(cfg: ModelConfig) -> tuple[int, int]:
    """(matmul weights, all params) of one attention layer."""
    D, H, K, d, b = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, int(cfg.bias)
    gate = {"none": 0, "headwise": H, "elementwise": H * d}[cfg.attn_gate]
    weights = D * H * d + D * 2 * K * d + D * gate + H * d * D
    biases = b * (H * d + 2 * K * d + gate + D)
    norms = 2 * _norm_params(cfg, d) if cfg.qk_norm else 0
    return weights, weights + biases + norms


def _mlp_params(cfg: ModelConfig, hidden: int) -> tuple[int, int]:
    D, n_in = cfg.d_model, 2 if cfg.mlp == "swiglu" else 1
    weights = D * n_in * hidden + hidden * D
    return weights, weights + int(cfg.bias) * (n_in * hidden + D)


def _moe_params(cfg: ModelConfig) -> tuple[int, int]:
    """(matmul weights used per token, all params) of one MoE layer."""
    D, E, F, k = cfg.d_model, cfg.n_experts, cfg.expert_dim, cfg.top_k
    per_expert = (2 if cfg.mlp == "swiglu" else 1) * D * F + F * D
    active, total = D * E + k * per_expert, D * E + E * per_expert
    if cfg.n_shared_experts:
        shared_w, shared_all = _mlp_params(cfg, cfg.n_shared_experts * F)
        active, total = active + shared_w, total + shared_all
    return active, total


def _layer_params(cfg: ModelConfig, layer: int) -> tuple[int, int]:
    attn_w, attn_all = _attention_params(cfg)
    ffn_w, ffn_all = _moe_params(cfg) if cfg.is_moe_layer(layer) else _mlp_params(cfg, cfg.ffn_dim)
    return attn_w + ffn_w, attn_all + ffn_all + 2 * _norm_params(cfg, cfg.d_model)


def param_count(cfg: ModelConfig) -> int:
    """Every parameter scalar of the model (embeddings included)."""
    V, D = cfg.vocab_size, cfg.d_model
    total = V * D + _norm_params(cfg, D)
    total += cfg.max_seq_len * D if cfg.position == "learned" else 0
    total += 0 if cfg.tie_embeddings else D * V
    return total + sum(_layer_params(cfg, i)[1] for i in range(cfg.n_layers))


def active_matmul_params(cfg: ModelConfig) -> int:
    """Matmul weights one token passes through in a forward pass (LM head included)."""
    return cfg.d_model * cfg.vocab_size + sum(_layer_params(cfg, i)[0] for i in range(cfg.n_layers))


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token at context length `seq_len`."""
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return 6.0 * active_matmul_params(cfg) + attention
