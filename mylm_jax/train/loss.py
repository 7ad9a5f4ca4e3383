"""The training objective: token-weighted cross-entropy plus the model's weighted extra terms.

For a batch split into M microbatches (gradient accumulation), with N valid target
tokens in the whole batch (loss_mask summed):

    J_m = (sum of token losses of microbatch m) / N  +  sum over terms t of  w_t * term_{t,m} / M
    J   = sum over m of J_m

so every token weighs the same however the batch is split (a mean of microbatch means
would overweight short microbatches), and each extra term is its mean over the
microbatches. The terms are whatever the model reports in `aux["losses"]` (MoE: the
load-balancing and router z-losses); their weights w_t are the `loss` config section's
fields of the same names. This module never names a term: a new variant's term needs a
weight in `LossConfig`, nothing here.

The PyTorch twin computes the same objective in mylm_torch/loss.py.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from mylm_jax.config import LossConfig


def cross_entropy_sum(logits_BTV: jax.Array, targets_BT: jax.Array,
                      loss_mask_BT: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(sum of per-token losses over masked-in tokens, number of those tokens), in float32."""
    logits = logits_BTV.astype(jnp.float32)
    # -log softmax(z)[y] = logsumexp(z) - z[y]
    log_z_BT = jax.nn.logsumexp(logits, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits, targets_BT[..., None], axis=-1)[..., 0]
    loss_BT = log_z_BT - target_logit_BT
    if loss_mask_BT is None:
        return loss_BT.sum(), jnp.asarray(loss_BT.size, jnp.float32)
    mask = loss_mask_BT.astype(jnp.float32)
    return (loss_BT * mask).sum(), mask.sum()


def cross_entropy(logits_BTV, targets_BT, loss_mask_BT=None) -> jax.Array:
    """Mean loss per valid token."""
    total, count = cross_entropy_sum(logits_BTV, targets_BT, loss_mask_BT)
    return total / jnp.maximum(count, 1.0)


def loss_weights(loss: LossConfig) -> dict[str, float]:
    """{term name: weight} from the `loss` config section."""
    return dataclasses.asdict(loss)


def weighted_terms(terms: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
    """sum over terms t of w_t * term_t; a term without a weight is an error, never dropped."""
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise KeyError(f"the model reports loss term(s) {missing} that the `loss` config section has no "
                       f"weight for (mylm_jax/config/schema.py LossConfig: {sorted(weights)})")
    return sum((weights[name] * term for name, term in terms.items()), jnp.zeros((), jnp.float32))


def objective(model_outputs: tuple, batch: Mapping[str, jax.Array], weights: Mapping[str, float],
              n_tokens: jax.Array, microbatches: int = 1) -> tuple[jax.Array, jax.Array]:
    """J_m of one microbatch (see the module docstring) and its sum of token losses.

    model_outputs: the model's (logits [B, T, V], aux); batch: targets and loss_mask [B, T].
    """
    logits, aux = model_outputs
    loss_sum, _ = cross_entropy_sum(logits, batch["targets"], batch.get("loss_mask"))
    value = loss_sum / n_tokens + weighted_terms(aux.get("losses", {}), weights) / microbatches
    return value, loss_sum
