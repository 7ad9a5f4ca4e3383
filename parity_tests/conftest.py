"""Shared set-up for the parity tests: precision, random weights, weight transfer.

The pattern (as in Levanter's twin tests): build the JAX module, give it random
weights, convert them with `mylm_torch.convert`, load them into the torch module,
run both in float32 and compare with `parity_tests.tolerances.compare`.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from mylm_jax.config import LossConfig, ModelConfig
from mylm_jax.model.params import flat_params
from mylm_jax.train.loss import loss_weights, objective
from mylm_jax.variants import variant as variant_config
from mylm_torch.convert import jax_to_torch
from mylm_torch.loss import objective as torch_objective


@pytest.fixture(scope="module", autouse=True)
def highest_matmul_precision():
    """Full float32 matmuls in JAX for every parity test.

    On CPU this changes nothing (XLA:CPU always multiplies in full float32; measured:
    the same result bit for bit as the default). On GPU the default lets XLA use TF32
    (10-bit mantissa), which would put ~1e-3 errors into every matmul and hide real
    bugs, so the suite pins it wherever it runs.
    """
    with jax.default_matmul_precision("highest"):
        yield


def copy_to_torch(jax_module: nnx.Module, torch_module: torch.nn.Module, cfg: ModelConfig,
                  prefix: str = "") -> None:
    """Load the JAX module's parameters into the torch module (strict: every name, every shape).

    prefix: where the module sits in the whole model (e.g. "blocks.0.attn"), which picks
    the conversion rules.
    """
    state = jax_to_torch(flat_params(jax_module), cfg, prefix)
    torch_module.load_state_dict(state, strict=True)


def packed_batch(B: int, T: int, seed: int = 0):
    """segment_ids and positions [B, T] (int32) for documents packed into rows.

    Row b holds 2-3 documents of random lengths (ids 1, 2, 3) and ends with padding
    (segment id 0) in even rows; positions restart at 0 in every document.
    """
    rng = np.random.default_rng(seed)
    segment_ids = np.zeros((B, T), np.int32)
    positions = np.zeros((B, T), np.int32)
    for b in range(B):
        n_pad = 3 if b % 2 == 0 else 0
        cuts = np.sort(rng.choice(np.arange(2, T - n_pad - 1), size=2, replace=False))
        bounds = [0, *cuts, T - n_pad]
        for doc, (start, end) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
            segment_ids[b, start:end] = doc
            positions[b, start:end] = np.arange(end - start)
        positions[b, T - n_pad:] = np.arange(n_pad)
    return segment_ids, positions


# MoE variants weight the aux losses heavily so that their gradients are a visible part
# of the router's gradient (the defaults, 0.01 and 0.001, would hide them).
PARITY_LOSS = LossConfig(load_balance=1.0, router_z=0.1)


def parity_config(name: str, **overrides):
    """A variant at the parity size (D 64: 4 heads of 16)."""
    return variant_config(name, d_model=64, **overrides)


def jax_training_loss(model, tokens, targets, segment_ids, positions, mask):
    """The project's objective (mylm_jax/train/loss.py) on one batch: token-mean cross-entropy
    over valid tokens plus the model's weighted extra terms."""
    outputs = model(tokens, segment_ids, positions)
    value, _ = objective(outputs, {"targets": targets, "loss_mask": mask}, loss_weights(PARITY_LOSS), mask.sum())
    return value, outputs


def torch_training_loss(model, tokens, targets, segment_ids, positions, mask):
    """The twin's objective (mylm_torch/loss.py), written with F.cross_entropy."""
    logits, aux = model(tokens, segment_ids, positions)
    value, _ = torch_objective(logits, aux, targets, mask, loss_weights(PARITY_LOSS), mask.sum())
    return value, logits, aux


def flat_aux(aux: dict) -> dict:
    """{"losses": {...}, "metrics": {...}} -> {"losses.load_balance": ..., "metrics.expert_load": ...}."""
    return {f"{kind}.{name}": value for kind, terms in aux.items() for name, value in terms.items()}
