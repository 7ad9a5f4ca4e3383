"""Muon in torch, the twin of mylm_jax/optim/muon.py (see there for the math).

Weights are nn.Linear layout [fan_out, fan_in] (stacked experts [E, fan_out, fan_in]);
`matrix_shapes` maps a parameter whose weight packs several matrices (fused k|v,
gate|up) to the [*batch, fan_out, fan_in] view Muon orthogonalises, and each matrix's
lr ratio comes from that view's shape. Both are the twin's own decisions
(mylm_torch/grouping.py, passed in by mylm_torch/optim.py); parity_tests/test_grouping.py
checks that they agree with the JAX side's.
With `ns_dtype=torch.bfloat16` it performs exactly torch.optim.Muon's operations (which
always iterate in bfloat16); with float32 it is the reference for the JAX Muon's
float32 parity.
"""

from __future__ import annotations

import torch

from mylm_torch.grouping import lr_ratio

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS, eps: float = 1e-7,
                  dtype=torch.float32) -> torch.Tensor:
    """Orthogonalise the last two axes, with the same fused operations as torch.optim.Muon
    (addmm: b A + c A A, then a X + B X), so that in bfloat16 it rounds exactly as it does."""
    if G.dim() > 3:  # several batch axes (experts x [gate | up]): one flat batch
        flat = newton_schulz(G.reshape(-1, *G.shape[-2:]), steps, coefficients, eps, dtype)
        return flat.reshape(G.shape)
    a, b, c = coefficients
    X = G.to(dtype)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    fused = torch.addmm if X.dim() == 2 else torch.baddbmm  # stacked experts: a batch of matrices
    for _ in range(steps):
        A = X @ X.mT
        B = fused(A, A, A, beta=b, alpha=c)
        X = fused(X, B, X, beta=a)
    return X.mT if transposed else X


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, ns_coefficients=NS_COEFFICIENTS, eps: float = 1e-7,
                 ns_dtype=torch.float32, adjust_lr: str = "original",
                 matrix_shapes: dict[torch.Tensor, tuple[int, ...]] | None = None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, ns_coefficients=ns_coefficients, eps=eps, ns_dtype=ns_dtype,
                        adjust_lr=adjust_lr)
        super().__init__(params, defaults)
        self.matrix_shapes = matrix_shapes or {}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                matrices = update.reshape(self.matrix_shapes.get(p, p.shape))
                matrices = newton_schulz(matrices, group["ns_steps"], group["ns_coefficients"], group["eps"],
                                         group["ns_dtype"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(matrices.reshape(p.shape), alpha=-lr * lr_ratio(matrices.shape, group["adjust_lr"]))
