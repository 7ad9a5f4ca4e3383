"""Muon: the JAX optimizer, the twin's torch Muon and torch.optim.Muon over 20 steps.

The chain of equalities:
    JAX Muon (float32 Newton-Schulz) == twin Muon (float32)        <= MUON_ABS
    twin Muon (bfloat16)             == torch.optim.Muon            bit for bit
    JAX Muon (bfloat16)              ~= torch.optim.Muon            <= MUON_BF16_ABS
torch.optim.Muon always iterates in bfloat16, so the float32 comparison runs against the
twin, which performs the same operations in either dtype.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from mylm_jax.optim.muon import muon
from mylm_torch.muon import Muon as TwinMuon
from parity_tests.tolerances import MUON_ABS, MUON_BF16_ABS, compare

SHAPES = [(64, 64), (96, 32), (32, 96), (3, 40, 24)]  # torch layout [.., fan_out, fan_in]; last: 3 experts
STEPS, LR = 20, 0.02


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    weights = [0.1 * rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]
    return weights, grads


def run_torch(optimizer_cls, weights, grads, shapes=SHAPES, **kw):
    params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w, s in zip(weights, SHAPES) if s in shapes]
    opt = optimizer_cls(params, lr=LR, **kw)
    for step_grads in grads:
        for p, g in zip(params, [g for g, s in zip(step_grads, SHAPES) if s in shapes]):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
    return [p.detach().numpy() for p in params]


def run_jax(weights, grads, shapes=SHAPES, **kw):
    """The same problem in JAX's kernel layout ([.., fan_in, fan_out]: the transpose)."""
    pick = [i for i, s in enumerate(SHAPES) if s in shapes]
    params = [jnp.asarray(weights[i].swapaxes(-1, -2)) for i in pick]
    tx = muon(LR, **kw)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step_grads in grads:
        updates, state = update([jnp.asarray(step_grads[i].swapaxes(-1, -2)) for i in pick], state, params)
        params = optax.apply_updates(params, updates)
    return [np.asarray(p).swapaxes(-1, -2) for p in params]


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust_lr", ["original", "match_rms_adamw"])
def test_jax_muon_equals_twin_in_float32(nesterov, adjust_lr):
    weights, grads = _problem()
    kw = dict(weight_decay=0.1, nesterov=nesterov, adjust_lr=adjust_lr)
    for i, (a, b) in enumerate(zip(run_jax(weights, grads, **kw), run_torch(TwinMuon, weights, grads, **kw))):
        compare(f"muon f32 {SHAPES[i]} nesterov={nesterov} {adjust_lr}", a, b, abs_tol=MUON_ABS)


@pytest.mark.parametrize("adjust_lr", ["original", "match_rms_adamw"])
def test_twin_in_bfloat16_is_torch_optim_muon(adjust_lr):
    weights, grads = _problem(1)
    matrices = [s for s in SHAPES if len(s) == 2]  # torch.optim.Muon takes 2-D parameters only
    ours = run_torch(TwinMuon, weights, grads, matrices, weight_decay=0.1, adjust_lr=adjust_lr,
                     ns_dtype=torch.bfloat16)
    ref = run_torch(torch.optim.Muon, weights, grads, matrices, weight_decay=0.1, adjust_lr_fn=adjust_lr)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)


def test_jax_muon_in_bfloat16_is_close_to_torch_optim_muon():
    weights, grads = _problem(2)
    matrices = [s for s in SHAPES if len(s) == 2]
    ours = run_jax(weights, grads, matrices, weight_decay=0.1, ns_dtype=jnp.bfloat16)
    ref = run_torch(torch.optim.Muon, weights, grads, matrices, weight_decay=0.1)
    for shape, a, b in zip(matrices, ours, ref):
        compare(f"muon bf16 vs torch.optim.Muon {shape}", a, b, abs_tol=MUON_BF16_ABS)


def test_jax_muon_equals_torch_optim_muon_with_float32_newton_schulz(monkeypatch):
    """torch.optim.Muon's own step (momentum lerp, Nesterov, decay, lr adjustment) with its
    Newton-Schulz, the one place it fixes bfloat16, swapped for the float32 one."""
    from torch.optim import _muon

    from mylm_torch.muon import newton_schulz

    monkeypatch.setattr(_muon, "_zeropower_via_newtonschulz",
                        lambda grad, coefficients, steps, eps: newton_schulz(grad, steps, coefficients, eps))
    weights, grads = _problem(3)
    matrices = [s for s in SHAPES if len(s) == 2]
    for adjust_lr in ("original", "match_rms_adamw"):
        ours = run_jax(weights, grads, matrices, weight_decay=0.1, adjust_lr=adjust_lr)
        ref = run_torch(torch.optim.Muon, weights, grads, matrices, weight_decay=0.1, adjust_lr_fn=adjust_lr)
        for shape, a, b in zip(matrices, ref, ours):
            compare(f"muon f32 vs torch.optim.Muon {shape} {adjust_lr}", a, b, abs_tol=MUON_ABS)
