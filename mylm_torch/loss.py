"""The twin's training objective: mylm_jax/train/loss.py in torch (see there for the math).

    J_m = (sum of token cross-entropies of microbatch m) / N  +  sum over terms t of w_t * term_{t,m} / M

N is the number of valid target tokens in the whole batch, M the number of
microbatches; the terms are the model's `aux["losses"]`, weighted by the `loss` config
section's fields of the same names.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
import torch.nn.functional as F

from mylm_jax.config import LossConfig


def loss_weights(loss: LossConfig) -> dict[str, float]:
    return dataclasses.asdict(loss)


def objective(logits_BTV: torch.Tensor, aux: dict, targets_BT: torch.Tensor, loss_mask_BT: torch.Tensor,
              weights: Mapping[str, float], n_tokens: torch.Tensor | float,
              microbatches: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(J_m, sum of token losses) of one microbatch."""
    V = logits_BTV.shape[-1]
    nll_N = F.cross_entropy(logits_BTV.reshape(-1, V).float(), targets_BT.reshape(-1).long(), reduction="none")
    loss_sum = (nll_N * loss_mask_BT.reshape(-1).float()).sum()
    terms = aux.get("losses", {})
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise KeyError(f"the model reports loss term(s) {missing} without a weight in LossConfig")
    value = loss_sum / n_tokens + sum(weights[name] * term for name, term in terms.items()) / microbatches
    return value, loss_sum
