"""The GPT model family in plain PyTorch: the twin of `mylm_jax.model.gpt`.

Same config (`mylm_jax.config.ModelConfig`), same math, idiomatic torch layouts:
nn.Linear weights are [out, in], stacked expert weights are [E, out, in] (one
nn.Linear weight per expert), norms are nn.LayerNorm / nn.RMSNorm. The parity tests
load converted JAX weights (`mylm_torch.convert`) and check logits and gradients.

    x = embed(tokens) (+ pos_embed(positions) when position == "learned")
    for each block:   x = x + attn(norm(x));   x = x + ffn(norm(x))      (ffn: MLP or MoE)
    logits = norm(x) @ W_head^T          (W_head = embed when tie_embeddings)

`GPT(cfg)(tokens, segment_ids=None, positions=None) -> (logits float32 [B, T, V], aux)`,
aux as in JAX: {"losses": {name: scalar}, "metrics": {name: tensor}}, empty for a dense
model; for MoE the mean over MoE layers of the losses `load_balance` and `router_z`, and
the metric `expert_load` stacked [n_moe_layers, E].

Shapes: B batch, T tokens, N = B*T, D model width, H query heads, K kv heads, d head
dim, V vocab, E experts, k experts per token, F expert hidden width. Activations
inside a block are flat [N, D], as in JAX.

cfg.dtype == "bfloat16" runs the forward under torch.autocast (matmul inputs in
bfloat16); the router and the logits stay float32. The parity tests use float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mylm_jax.config import ModelConfig


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """LayerNorm (bias when cfg.bias) or RMSNorm over the last axis, with cfg.norm_eps."""
    if cfg.norm == "layernorm":
        return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)
    return nn.RMSNorm(dim, eps=cfg.norm_eps)


# --------------------------------------------------------------------------- RoPE

def rope_cos_sin(positions_BT: torch.Tensor, head_dim: int, theta: float):
    """cos and sin of the rotation angles, [B, T, 1, d/2] each (computed once per forward).

    Pair (i, i + d/2) of every head turns by the angle pos * theta^(-2i/d).
    """
    half = head_dim // 2
    inv_freq_F = theta ** (-torch.arange(half, dtype=torch.float32, device=positions_BT.device) / half)
    angle_BTF = positions_BT[..., None].float() * inv_freq_F
    return angle_BTF.cos()[:, :, None, :], angle_BTF.sin()[:, :, None, :]


def apply_rope(x_BTHd: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, "rotate half" layout: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]."""
    x1, x2 = x_BTHd.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x_BTHd.dtype)


# --------------------------------------------------------------------------- attention

def attention_mask(segment_ids_BT: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] boolean: query t sees key s iff s <= t and both lie in one document."""
    T = segment_ids_BT.shape[1]
    causal_TT = torch.ones(T, T, dtype=torch.bool, device=segment_ids_BT.device).tril()
    same_doc_BTT = segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    return (causal_TT & same_doc_BTT)[:, None]


class Attention(nn.Module):
    """Causal GQA self-attention with optional QK-norm, RoPE and output gate (Qwen G1)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, H, K, d = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.cfg = cfg
        self.q = nn.Linear(D, H * d, bias=cfg.bias)
        self.kv = nn.Linear(D, 2 * K * d, bias=cfg.bias)  # output rows: [k heads | v heads]
        if cfg.qk_norm:  # normalise each head's q and k over head_dim, before RoPE
            self.q_norm = make_norm(cfg, d)
            self.k_norm = make_norm(cfg, d)
        if cfg.attn_gate != "none":  # one gate per head (headwise) or per element (elementwise)
            self.gate = nn.Linear(D, H if cfg.attn_gate == "headwise" else H * d, bias=cfg.bias)
        self.out = nn.Linear(H * d, D, bias=cfg.bias)

    def forward(self, x_ND, B: int, T: int, rope=None, mask_B1TT=None):
        """x_ND: the block's normed input; rope: (cos, sin) or None; mask: None = plain causal."""
        cfg = self.cfg
        H, K, d = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        q_BTHd = self.q(x_ND).view(B, T, H, d)
        k_BTKd, v_BTKd = self.kv(x_ND).view(B, T, 2, K, d).unbind(2)
        if cfg.qk_norm:
            q_BTHd, k_BTKd = self.q_norm(q_BTHd), self.k_norm(k_BTKd)
        if rope is not None:
            q_BTHd, k_BTKd = apply_rope(q_BTHd, *rope), apply_rope(k_BTKd, *rope)
        # softmax(q k^T / sqrt(d) + mask) v; query head h reads kv head h // (H/K) (enable_gqa).
        y_BHTd = F.scaled_dot_product_attention(
            q_BTHd.transpose(1, 2), k_BTKd.transpose(1, 2), v_BTKd.transpose(1, 2),
            attn_mask=mask_B1TT, is_causal=mask_B1TT is None, enable_gqa=K != H)
        y_NHd = y_BHTd.transpose(1, 2).reshape(B * T, H, d)
        if cfg.attn_gate != "none":  # y * sigmoid(x W_g), per head or per element
            gate = torch.sigmoid(self.gate(x_ND))
            y_NHd = y_NHd * (gate[:, :, None] if cfg.attn_gate == "headwise" else gate.view(-1, H, d))
        return self.out(y_NHd.reshape(B * T, H * d))


# --------------------------------------------------------------------------- feed-forward

def _activation(cfg: ModelConfig, h: torch.Tensor) -> torch.Tensor:
    """GELU (exact, erf) of h [.., F], or SwiGLU silu(gate) * up of h = [gate | up] [.., 2F]."""
    if cfg.mlp == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(h, approximate="none")


class MLP(nn.Module):
    """fc -> gelu -> proj, or SwiGLU with gate and up fused in one Linear (rows [gate | up])."""

    def __init__(self, cfg: ModelConfig, hidden: int):
        super().__init__()
        self.cfg = cfg
        if cfg.mlp == "swiglu":
            self.gate_up = nn.Linear(cfg.d_model, 2 * hidden, bias=cfg.bias)
        else:
            self.fc = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x_ND):
        h = self.gate_up(x_ND) if self.cfg.mlp == "swiglu" else self.fc(x_ND)
        return self.proj(_activation(self.cfg, h))


class MoE(nn.Module):
    """Dropless top-k mixture of experts (see mylm_jax/model/moe.py for the math).

    p = softmax(x W_r) (float32); top-k experts per token with weights p (renormalised
    to sum 1 when cfg.router_renormalize); y = sum_j w_j Expert_j(x) + Shared(x).
    Token copies are sorted by expert, so each expert runs one matmul on its own group.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, E, F_ = cfg.d_model, cfg.n_experts, cfg.expert_dim
        self.cfg = cfg
        self.router = nn.Linear(D, E, bias=False)
        n_in = 2 if cfg.mlp == "swiglu" else 1  # SwiGLU experts: rows [gate | up]
        self.w_in = nn.Parameter(torch.empty(E, n_in * F_, D))  # expert e: nn.Linear weight w_in[e]
        self.w_out = nn.Parameter(torch.empty(E, D, F_))
        if cfg.n_shared_experts:
            self.shared = MLP(cfg, cfg.n_shared_experts * F_)

    def forward(self, x_ND, valid_N=None):
        cfg = self.cfg
        E, k = cfg.n_experts, cfg.top_k
        with torch.autocast(x_ND.device.type, enabled=False):  # routing stays in the params' float32
            logits_NE = self.router(x_ND.to(self.router.weight.dtype))
        probs_NE = logits_NE.softmax(-1)
        top_w_Nk, top_idx_Nk = probs_NE.topk(k, dim=-1)
        if cfg.router_renormalize:
            top_w_Nk = top_w_Nk / top_w_Nk.sum(-1, keepdim=True)

        # M = N*k token copies, grouped by expert (a stable sort keeps token order inside a group).
        expert_M = top_idx_Nk.reshape(-1)
        order_M = torch.argsort(expert_M, stable=True)
        token_M = order_M // k
        group_sizes = torch.bincount(expert_M, minlength=E).tolist()  # one host sync per layer
        xs_MD = x_ND.index_select(0, token_M)
        ys = [F.linear(_activation(cfg, F.linear(xs_gD, self.w_in[e])), self.w_out[e])
              for e, xs_gD in enumerate(xs_MD.split(group_sizes))]
        y_MD = torch.cat(ys) * top_w_Nk.reshape(-1)[order_M, None]
        y_ND = torch.zeros_like(x_ND, dtype=y_MD.dtype).index_add(0, token_M, y_MD)
        if cfg.n_shared_experts:
            y_ND = y_ND + self.shared(x_ND)

        # Aux statistics over valid tokens (segment id 0 = padding is left out).
        valid_N = x_ND.new_ones(x_ND.shape[0], dtype=torch.float32) if valid_N is None else valid_N.float()
        n_valid = valid_N.sum().clamp(min=1.0)
        chosen_NE = torch.zeros_like(probs_NE).scatter(1, top_idx_Nk, 1.0)  # 0/1 per expert
        f_E = (chosen_NE * valid_N[:, None]).sum(0) / n_valid  # fraction of tokens choosing e
        P_E = (probs_NE * valid_N[:, None]).sum(0) / n_valid  # mean router probability of e
        z_N = torch.logsumexp(logits_NE, dim=-1)
        aux = {
            "losses": {
                "load_balance": E * (f_E * P_E).sum(),  # Switch Transformer
                "router_z": (z_N.square() * valid_N).sum() / n_valid,  # ST-MoE
            },
            "metrics": {"expert_load": f_E / k},
        }
        return y_ND, aux


# --------------------------------------------------------------------------- the model

class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = make_norm(cfg, cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg, cfg.d_model)
        self.is_moe = cfg.is_moe_layer(layer)
        self.mlp = MoE(cfg) if self.is_moe else MLP(cfg, cfg.ffn_dim)

    def forward(self, x_ND, B, T, rope, mask_B1TT, valid_N):
        x_ND = x_ND + self.attn(self.attn_norm(x_ND), B, T, rope, mask_B1TT)
        h_ND = self.mlp_norm(x_ND)
        if self.is_moe:
            y_ND, aux = self.mlp(h_ND, valid_N)
        else:
            y_ND, aux = self.mlp(h_ND), None
        return x_ND + y_ND, aux


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.fp8 or cfg.param_dtype != "float32":  # the twin proves the float32 / bfloat16 numbers only
            raise ValueError("the twin has no model.fp8 and keeps float32 parameters (model.param_dtype=float32); "
                             "these options are JAX-only (docs/precision.md)")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.position == "learned":
            self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = make_norm(cfg, cfg.d_model)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """nanoGPT-style: weights N(0, init_std); projections that write into the residual
        stream N(0, init_std / sqrt(2 L)); biases 0, norm scales 1."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if "norm" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith(("attn.out.weight", "proj.weight", "w_out")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens_BT, segment_ids_BT=None, positions_BT=None):
        cfg = self.cfg
        B, T = tokens_BT.shape
        if positions_BT is None:
            positions_BT = torch.arange(T, device=tokens_BT.device).expand(B, T)
        with torch.autocast(tokens_BT.device.type, dtype=torch.bfloat16,
                            enabled=cfg.dtype == "bfloat16"):
            x_ND = self.embed(tokens_BT.reshape(-1))
            if cfg.position == "learned":
                x_ND = x_ND + self.pos_embed(positions_BT.reshape(-1))
            rope = rope_cos_sin(positions_BT, cfg.head_dim, cfg.rope_theta) \
                if cfg.position == "rope" else None
            mask_B1TT = None if segment_ids_BT is None else attention_mask(segment_ids_BT)
            valid_N = None if segment_ids_BT is None else segment_ids_BT.reshape(-1) != 0

            layer_aux = []
            for block in self.blocks:
                x_ND, aux = block(x_ND, B, T, rope, mask_B1TT, valid_N)
                if aux is not None:
                    layer_aux.append(aux)

            h_ND = self.final_norm(x_ND)
            head_VD = self.embed.weight if cfg.tie_embeddings else self.lm_head.weight
            logits_BTV = F.linear(h_ND, head_VD).view(B, T, cfg.vocab_size).float()
        return logits_BTV, merge_aux(layer_aux)


def merge_aux(per_layer: list[dict]) -> dict:
    """Each loss term averaged over the layers that report it, each metric stacked."""
    merged = {"losses": {}, "metrics": {}}
    for kind, combine in (("losses", lambda xs: torch.stack(xs).mean()), ("metrics", torch.stack)):
        names = dict.fromkeys(name for aux in per_layer for name in aux[kind])
        merged[kind] = {name: combine([aux[kind][name] for aux in per_layer if name in aux[kind]])
                        for name in names}
    return merged
