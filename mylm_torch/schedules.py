"""The learning-rate schedules in plain Python for torch (twin of mylm_jax/optim/schedules.py).

`lr_factor(optim, total_steps, step)` is the multiplier of optim.lr at a step;
`scheduler(optimizer, optim, total_steps)` wraps it in a `torch.optim.lr_scheduler.LambdaLR`,
so that after `k` calls to `scheduler.step()` the optimizer uses the lr of step k.
"""

from __future__ import annotations

import math

import torch

from mylm_jax.config import OptimConfig


def lr_factor(optim: OptimConfig, total_steps: int, step: int) -> float:
    W, S, r = optim.warmup_steps, total_steps, optim.min_lr_ratio
    if step < W:
        return (step + 1) / W
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "cosine":
        p = min(max((step - W) / max(1, S - W), 0.0), 1.0)
        return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p))
    decay_steps = round(optim.decay_fraction * S)
    p = min(max((step - (S - decay_steps)) / max(1, decay_steps), 0.0), 1.0)
    shape = {"linear": 1 - p, "cosine": 0.5 * (1 + math.cos(math.pi * p)), "1-sqrt": 1 - math.sqrt(p)}
    return r + (1 - r) * shape[optim.decay_shape]


def scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(optim, total_steps, step))
