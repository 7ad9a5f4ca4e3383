"""Training parity: 50 optimizer steps of every variant with AdamW and with Muon, through the
real training steps (mylm_jax/train/state.py create_state + mylm_jax/train/step.py
make_train_steps, as `mylm pretrain` runs them: 8 steps per call, the last call 2 steps
and 6 padding steps, 2 microbatches) and through the twin (mylm_torch: model, objective,
TwinOptimizer, the same 2 microbatches accumulated with backward()), from the same weights
on the same batches; the loss curves (and MoE's logged aux losses) must agree.

This checks everything at once: forward, backward, the objective with its weighted extra
terms, token-weighted gradient accumulation, the non-finite guard (every step here is
finite, so it must pass every update through), clipping, each side's own parameter
grouping (AdamW's decay mask, Muon's matrix views and lr ratios), both schedules and the
Muon momentum warmup. Rounding differences compound over the steps (each update depends
on the last), so the bound is looser than a single forward's (tolerances.TRAIN_LOSS_ABS).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from mylm_jax.config import Config, DataConfig, MeshConfig, OptimConfig, TrainConfig
from mylm_jax.model.gpt import GPT as JaxGPT
from mylm_jax.model.params import load_flat_params, param_shapes, random_params
from mylm_jax.parallel import make_mesh, shard_batch
from mylm_jax.train.loss import loss_weights
from mylm_jax.train.state import create_state
from mylm_jax.train.step import k_step_batch, make_train_steps
from mylm_jax.variants import VARIANTS
from mylm_torch.convert import jax_to_torch
from mylm_torch.loss import objective as torch_objective
from mylm_torch.model import GPT as TorchGPT
from mylm_torch.optim import TwinOptimizer
from parity_tests.conftest import PARITY_LOSS, parity_config
from parity_tests.tolerances import TRAIN_LOSS_ABS, compare

STEPS, B, T, M = 50, 4, 16, 2
K = 8  # optimizer steps per call (train.steps_per_call)
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


def as_batch(tokens_BT1: np.ndarray) -> dict[str, np.ndarray]:
    """One document per row: the loader's batch format."""
    return {"inputs": tokens_BT1[:, :-1], "targets": tokens_BT1[:, 1:], "loss_mask": np.ones((B, T), np.float32),
            "segment_ids": np.ones((B, T), np.int32), "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1))}


def train_jax(cfg: Config, weights: dict, tokens: np.ndarray) -> list[dict]:
    mesh = make_mesh(cfg.mesh)
    ts = create_state(cfg, mesh)
    model, optimizer = ts.models()
    load_flat_params(model, weights)  # the twin's starting weights; the fresh moments stay
    ts.state = jax.device_put(nnx.state((model, optimizer)), ts.shardings)
    steps = make_train_steps(cfg, ts, K)
    history = []
    for start in range(0, len(tokens), K):
        host, active = k_step_batch([as_batch(b) for b in tokens[start:start + K]], K)  # the last one padded
        ts.state, metrics, _ = steps(ts.state, shard_batch(host, mesh, K * M), active, False)
        metrics = jax.device_get(metrics)
        history += [{k: v[i] for k, v in metrics.items()} for i in range(active.sum())]
    return history


def train_torch(cfg: Config, model: torch.nn.Module, tokens: np.ndarray) -> list[dict]:
    """The twin's loop: per step, M microbatches of B / M rows, each backward() adding its
    J_m's gradient (mylm_torch/loss.py), then one optimizer step."""
    optimizer, weights = TwinOptimizer(model, cfg.optim, STEPS), loss_weights(cfg.loss)
    history = []
    for b in tokens:
        batch = {k: torch.from_numpy(v) for k, v in as_batch(b).items()}
        n_tokens = batch["loss_mask"].sum()
        optimizer.zero_grad()
        record = {"loss": 0.0}
        for m in range(M):
            mb = {k: v.chunk(M)[m] for k, v in batch.items()}
            logits, aux = model(mb["inputs"], mb["segment_ids"], mb["positions"])
            value, loss_sum = torch_objective(logits, aux, mb["targets"], mb["loss_mask"], weights, n_tokens, M)
            value.backward()
            record["loss"] += loss_sum.item() / n_tokens.item()
            for name, term in aux["losses"].items():
                record[f"{name}_loss"] = record.get(f"{name}_loss", 0.0) + term.item() / M
        optimizer.step()
        history.append(record)
    return history


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("name", list(VARIANTS))
def test_loss_curves_agree(name, optimizer):
    cfg = Config(model=parity_config(name), data=DataConfig(seq_len=T), optim=OPTIMIZERS[optimizer],
                 loss=PARITY_LOSS, train=TrainConfig(steps=STEPS, batch_size=B, microbatches=M),
                 mesh=MeshConfig(data=1))
    weights = random_params(param_shapes(nnx.eval_shape(lambda: JaxGPT(cfg.model, nnx.Rngs(0)))), seed=3)
    torch_model = TorchGPT(cfg.model)
    torch_model.load_state_dict(jax_to_torch(weights, cfg.model), strict=True)
    tokens = learnable_batches(cfg.model.vocab_size)

    torch_history = train_torch(cfg, torch_model, tokens)
    jax_history = train_jax(cfg, weights, tokens)
    assert all(bool(m["finite"]) for m in jax_history)
    jax_losses = np.array([float(m["loss"]) for m in jax_history])
    assert jax_losses[-1] < jax_losses[0] - 0.5, "the run should learn, or the check says little"
    for key in torch_history[0]:
        compare(f"{name} {optimizer} {key} curve", np.array([r[key] for r in torch_history]),
                np.array([float(m[key]) for m in jax_history]), abs_tol=TRAIN_LOSS_ABS)
