"""Learning-rate schedules: lr(step) = optim.lr * factor(step), step = 0, 1, ..., S - 1.

With W = optim.warmup_steps, S = train.steps, r = optim.min_lr_ratio:

    warmup     factor = (step + 1) / W                  for step < W (never exactly 0)
    constant   factor = 1
    cosine     factor = r + (1 - r) * (1 + cos(pi p)) / 2,  p = (step - W) / (S - W)
    wsd        factor = 1 until the last D = round(decay_fraction * S) steps, then
               r + (1 - r) * shape(p),  p = (step - (S - D)) / D, with shape
                   linear  1 - p
                   cosine  (1 + cos(pi p)) / 2
                   1-sqrt  1 - sqrt(p)      (Hägele et al. 2024: matches cosine at equal compute)

p is clipped to [0, 1], so steps past S keep the final lr. Warmup-stable-decay
(MiniCPM, Hägele et al.) keeps the lr flat so that a run can be extended or branched
into a decay at any point; cosine needs to know S from the start.

The same formulas in torch: `mylm_torch/schedules.py`; parity: `parity_tests/test_schedules.py`.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from mylm_jax.config import OptimConfig


def lr_factor(optim: OptimConfig, total_steps: int) -> Callable:
    """step (int or int array) -> multiplier of optim.lr, in float32 (jit-friendly)."""
    W, S, r = optim.warmup_steps, total_steps, optim.min_lr_ratio
    decay_steps = round(optim.decay_fraction * S)

    def factor(step):
        step = jnp.asarray(step, jnp.float32)
        if optim.schedule == "constant":
            after = jnp.ones_like(step)
        elif optim.schedule == "cosine":
            p = jnp.clip((step - W) / max(1, S - W), 0.0, 1.0)
            after = r + (1 - r) * 0.5 * (1 + jnp.cos(jnp.pi * p))
        else:  # wsd
            p = jnp.clip((step - (S - decay_steps)) / max(1, decay_steps), 0.0, 1.0)
            shape = {"linear": lambda: 1 - p, "cosine": lambda: 0.5 * (1 + jnp.cos(jnp.pi * p)),
                     "1-sqrt": lambda: 1 - jnp.sqrt(p)}[optim.decay_shape]()
            after = r + (1 - r) * shape
        if W == 0:
            return after
        return jnp.where(step < W, (step + 1) / W, after)

    return factor


def lr_schedule(optim: OptimConfig, total_steps: int) -> Callable:
    """step -> learning rate (an optax-style schedule)."""
    factor = lr_factor(optim, total_steps)
    return lambda step: optim.lr * factor(step)
