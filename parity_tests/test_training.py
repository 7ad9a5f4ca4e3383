"""Training parity: 50 optimizer steps of every variant with AdamW and with Muon, in JAX
and in the twin, from the same weights on the same batches; the loss curves must agree.

This checks everything at once: forward, backward, clipping, the parameter grouping,
AdamW's decay mask, Muon's matrix views and lr ratios, both schedules and the Muon
momentum warmup. Rounding differences compound over the steps (each update depends on
the last), so the bound is looser than a single forward's (tolerances.TRAIN_LOSS_ABS).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from mylm_jax.config import OptimConfig
from mylm_jax.model.gpt import GPT as JaxGPT
from mylm_jax.model.params import flat_params
from mylm_jax.optim.build import build_optimizer, param_assignments
from mylm_torch.convert import jax_to_torch, param_layout
from mylm_torch.model import GPT as TorchGPT
from mylm_torch.optim import TwinOptimizer
from parity_tests.conftest import jax_training_loss, parity_config, torch_training_loss
from parity_tests.tolerances import TRAIN_LOSS_ABS, compare
from tests.variants import VARIANTS, build_jax

STEPS, B, T = 50, 4, 16
COMMON = dict(lr=3e-3, weight_decay=0.1, grad_clip=0.5, schedule="cosine", warmup_steps=5, min_lr_ratio=0.1)
OPTIMIZERS = {
    "adamw": OptimConfig(name="adamw", **COMMON),
    # Muon on the hidden matrices, AdamW on the rest; decay on norms too (a non-default mask),
    # the momentum warmup on, and Moonlight's lr ratio.
    "muon": OptimConfig(name="muon", **COMMON, muon_lr=0.01, muon_weight_decay=0.05,
                        muon_momentum_warmup_steps=20, muon_adjust_lr="match_rms_adamw",
                        no_decay=("embedding", "bias")),
}


def learnable_batches(vocab: int, seed: int = 0) -> np.ndarray:
    """[STEPS, B, T+1] token ids following t' = (5 t + 3) mod V with 10% random tokens:
    a pattern the model can learn, so the losses move far from their start."""
    rng = np.random.default_rng(seed)
    tokens = np.empty((STEPS, B, T + 1), np.int32)
    tokens[..., 0] = rng.integers(0, vocab, (STEPS, B))
    for t in range(1, T + 1):
        tokens[..., t] = (5 * tokens[..., t - 1] + 3) % vocab
    noise = rng.random(tokens.shape) < 0.1
    tokens[noise] = rng.integers(0, vocab, noise.sum())
    return tokens


def train_jax(cfg, optim, model, tokens) -> list[float]:
    tx = build_optimizer(optim, STEPS, param_assignments(model, optim))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    mask = jnp.ones((B, T), jnp.float32)

    @nnx.jit
    def step(model, optimizer, inputs, targets):
        (loss, _), grads = nnx.value_and_grad(jax_training_loss, has_aux=True)(
            model, cfg, inputs, targets, None, None, mask)
        optimizer.update(model, grads)
        return loss

    return [float(step(model, optimizer, jnp.asarray(b[:, :-1]), jnp.asarray(b[:, 1:]))) for b in tokens]


def train_torch(cfg, optim, model, assignments, tokens) -> list[float]:
    optimizer = TwinOptimizer(model, optim, STEPS, assignments)
    mask = torch.ones(B, T)
    losses = []
    for b in torch.from_numpy(tokens):
        optimizer.zero_grad()
        loss, _, _ = torch_training_loss(model, cfg, b[:, :-1], b[:, 1:], None, None, mask)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("name", list(VARIANTS))
def test_loss_curves_agree(name, optimizer):
    cfg, optim = parity_config(name), OPTIMIZERS[optimizer]
    jax_model = build_jax(lambda: JaxGPT(cfg, nnx.Rngs(0)), seed=3)
    torch_model = TorchGPT(cfg)
    torch_model.load_state_dict(jax_to_torch(flat_params(jax_model), cfg), strict=True)
    assignments = param_assignments(jax_model, optim)
    if optimizer == "muon":
        assert any(a.optimizer == "muon" for a in assignments.values())
    tokens = learnable_batches(cfg.vocab_size)

    torch_losses = train_torch(cfg, optim, torch_model, assignments, tokens)
    jax_losses = train_jax(cfg, optim, jax_model, tokens)
    assert jax_losses[-1] < jax_losses[0] - 0.5, "the run should learn, or the check says little"
    compare(f"{name} {optimizer} loss curve", np.array(torch_losses), np.array(jax_losses),
            abs_tol=TRAIN_LOSS_ABS)


@pytest.mark.parametrize("name", ["gpt2", "gated_elementwise", "moe_swiglu_shared", "moe_gelu"])
def test_twin_sees_the_same_matrices(name):
    """For every Muon parameter, the twin's reshape of its torch weight holds exactly the
    transposes of the matrices JAX's MatrixView cuts from the kernel."""
    cfg = parity_config(name)
    jax_model = build_jax(lambda: JaxGPT(cfg, nnx.Rngs(0)), seed=0)
    flat, state = flat_params(jax_model), jax_to_torch(flat_params(jax_model), cfg)
    layout = param_layout(cfg)
    for param, a in param_assignments(jax_model, OPTIMIZERS["muon"]).items():
        if a.view:
            *batch, fan_in, fan_out = a.view.matrix_shape
            torch_matrices = state[layout[param].torch_name].numpy().reshape(*batch, fan_out, fan_in)
            np.testing.assert_array_equal(torch_matrices.swapaxes(-1, -2), a.view.to_matrix(flat[param]))
