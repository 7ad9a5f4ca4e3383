"""Token-weighted cross-entropy.

The loss of a batch is  sum over valid tokens of -log p(target) / number of valid
tokens. Returning the *sum* and the *count* separately lets gradient accumulation
add sums over microbatches and divide once, so every token weighs the same however
the batch was split (a mean of microbatch means would overweight short microbatches).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
