"""AdamW: the project's JAX AdamW (+ global-norm clipping, + schedule) against
torch.optim.AdamW (+ clip_grad_norm_, + LambdaLR) over 20 steps on random tensors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from mylm_jax.config import OptimConfig
from mylm_jax.optim.adamw import adamw, clip_by_global_norm, global_norm
from mylm_jax.optim.schedules import lr_schedule
from mylm_torch.schedules import scheduler
from parity_tests.tolerances import ADAMW_REL, compare

SHAPES = {"w1": (64, 48), "w2": (3, 16, 8), "norm": (48,), "bias": (8,)}
NO_DECAY = {"norm", "bias"}
STEPS = 20
OPTIM = OptimConfig(lr=0.01, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, schedule="cosine",
                    warmup_steps=5, min_lr_ratio=0.1)


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    # Gradient scales differ per step and per tensor, so Adam's normalisation matters.
    grads = [{k: (rng.standard_normal(s) * rng.uniform(0.01, 3)).astype(np.float32)
              for k, s in SHAPES.items()} for _ in range(STEPS)]
    return params, grads


def run_jax(params, grads, clip):
    tx = adamw(lr_schedule(OPTIM, STEPS), OPTIM.beta1, OPTIM.beta2, OPTIM.eps, OPTIM.weight_decay,
               decay={k: k not in NO_DECAY for k in SHAPES})
    if clip:
        tx = optax.chain(clip_by_global_norm(clip), tx)
    params = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads:
        updates, state = update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
        params = optax.apply_updates(params, updates)
    return {k: np.asarray(v) for k, v in params.items()}


def run_torch(params, grads, clip):
    tensors = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    groups = [{"params": [tensors[k] for k in SHAPES if k not in NO_DECAY], "weight_decay": OPTIM.weight_decay},
              {"params": [tensors[k] for k in SHAPES if k in NO_DECAY], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=OPTIM.lr, betas=(OPTIM.beta1, OPTIM.beta2), eps=OPTIM.eps, foreach=False)
    sched = scheduler(opt, OPTIM, STEPS)
    for g in grads:
        for k, t in tensors.items():
            t.grad = torch.from_numpy(g[k].copy())
        if clip:
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), clip)
        opt.step()
        sched.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


@pytest.mark.parametrize("clip", [0.0, 1.0], ids=["no_clip", "clip"])
def test_adamw_equals_torch_optim_adamw(clip):
    params, grads = _problem()
    ours, ref = run_jax(params, grads, clip), run_torch(params, grads, clip)
    for k in SHAPES:
        compare(f"adamw clip={clip} {k}", ref[k], ours[k], rel_tol=ADAMW_REL)


def test_clip_scale_equals_torch():
    _, grads = _problem(1)
    g = grads[0]
    clipped, _ = clip_by_global_norm(1.0).update({k: jnp.asarray(v) for k, v in g.items()}, None)
    tensors = [torch.from_numpy(v.copy()).requires_grad_() for v in g.values()]
    for t, v in zip(tensors, g.values()):
        t.grad = torch.from_numpy(v.copy())
    norm = torch.nn.utils.clip_grad_norm_(tensors, 1.0)
    compare("global norm", norm, global_norm({k: jnp.asarray(v) for k, v in g.items()}), abs_tol=1e-5 * float(norm))
    for t, k in zip(tensors, g):
        compare(f"clipped {k}", t.grad, clipped[k], abs_tol=1e-7)
