"""Which optimizer updates which parameter of the twin, with what weight decay and lr multiplier.

The twin decides this on its own, from the torch model's structure (mylm_torch/model.py:
parameter names, torch shapes, `model.cfg`); it does not ask the JAX side.
parity_tests/test_grouping.py checks that both sides decide the same for every parameter
of every variant.

    kind        twin parameters                                      optimizer (name: muon)
    embedding   embed.weight, pos_embed.weight                       AdamW
    head        lm_head.weight (untied)                              AdamW
    norm        every *norm's weight (and LayerNorm's bias)          AdamW
    bias        the biases of nn.Linear layers                       AdamW
    score       mlp.router.weight [E, D], headwise attn.gate [H, D]: AdamW
                one logit per expert / per head, a handful of outputs
    matrix      the other nn.Linear weights (q, kv, gate, out, fc, proj, gate_up)   Muon
    experts     stacked MoE expert weights w_in, w_out               Muon, per expert

With `optim.name: adamw` every kind goes to AdamW. Weight decay is on unless the kind
is listed in `optim.no_decay`.

Muon orthogonalises matrices, so every Muon weight gets the view [*batch, fan_out, fan_in]
it is reshaped to (nn.Linear stores [out, in]). A weight whose rows pack two layers (k|v,
gate|up) is two matrices, as it would be with two nn.Linear layers; every expert is its own:

    q.weight        [H*d, D]         -> [H*d, D]
    kv.weight       [2*K*d, D]       -> 2 x [K*d, D]       rows [k heads | v heads]
    gate.weight     [H*d, D]         -> [H*d, D]           (elementwise gate)
    out.weight      [D, H*d]         -> [D, H*d]
    gate_up.weight  [2F, D]          -> 2 x [F, D]         rows [gate | up]
    w_in            [E, 2F, D]       -> E x 2 x [F, D]     (SwiGLU; GELU experts: E x [F, D])
    w_out           [E, D, F]        -> E x [D, F]

Each Muon matrix's update is scaled by `lr_ratio` of its shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from mylm_jax.config import ModelConfig, OptimConfig, ParamKind

FUSED = ("attn.kv.weight", "gate_up.weight")  # rows [first | second]: two matrices


def lr_ratio(matrix_shape: Sequence[int], adjust_lr: str) -> float:
    """Muon's lr multiplier for a matrix in torch layout [..., fan_out, fan_in]:
        original         sqrt(max(1, fan_out / fan_in))     (Keller Jordan's Muon)
        match_rms_adamw  0.2 * sqrt(max(fan_in, fan_out))   (Moonlight: update RMS ~ AdamW's)
    """
    fan_out, fan_in = matrix_shape[-2], matrix_shape[-1]
    if adjust_lr == "original":
        return math.sqrt(max(1.0, fan_out / fan_in))
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(fan_in, fan_out))
    raise ValueError(f"adjust_lr must be 'original' or 'match_rms_adamw', got {adjust_lr!r}")


@dataclass(frozen=True)
class Decision:
    kind: ParamKind
    optimizer: str  # "adamw" | "muon"
    weight_decay: bool
    matrix_shape: tuple[int, ...] | None = None  # Muon only: [*batch, fan_out, fan_in]
    lr_multiplier: float = 1.0  # Muon only: lr_ratio(matrix_shape)


def param_kind(name: str, cfg: ModelConfig) -> ParamKind:
    """The kind of a twin parameter, from its name in `model.named_parameters()`."""
    parts = name.split(".")
    leaf, owner = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if name in ("embed.weight", "pos_embed.weight"):
        return "embedding"
    if name == "lm_head.weight":
        return "head"
    if owner.endswith("norm"):
        return "norm"  # attn_norm, mlp_norm, q_norm, k_norm, final_norm
    if leaf == "bias":
        return "bias"
    if name.endswith("mlp.router.weight") or (name.endswith("attn.gate.weight") and cfg.attn_gate == "headwise"):
        return "score"
    if leaf in ("w_in", "w_out"):
        return "experts"
    if leaf == "weight":
        return "matrix"
    raise ValueError(f"twin parameter '{name}': no optimizer rule for it (add one to mylm_torch/grouping.py)")


def matrix_shape(name: str, shape: Sequence[int], cfg: ModelConfig) -> tuple[int, ...]:
    """A Muon weight [*experts, out, in] as the matrices it holds: [*batch, fan_out, fan_in]."""
    *experts, out, fan_in = shape
    if name.endswith(FUSED) or (name.endswith("w_in") and cfg.mlp == "swiglu"):
        return (*experts, 2, out // 2, fan_in)
    return tuple(shape)


def decide(name: str, shape: Sequence[int], cfg: ModelConfig, optim: OptimConfig) -> Decision:
    kind = param_kind(name, cfg)
    decay = kind not in optim.no_decay
    if optim.name == "muon" and kind in ("matrix", "experts"):
        matrices = matrix_shape(name, shape, cfg)
        return Decision(kind, "muon", decay, matrices, lr_ratio(matrices, optim.muon_adjust_lr))
    return Decision(kind, "adamw", decay)


def decide_all(model: torch.nn.Module, optim: OptimConfig) -> dict[str, Decision]:
    """{torch parameter name: Decision} for every parameter of a `mylm_torch.model.GPT`."""
    return {name: decide(name, tuple(p.shape), model.cfg, optim) for name, p in model.named_parameters()}
