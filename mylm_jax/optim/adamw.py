"""AdamW (Loshchilov & Hutter 2019) and global-norm gradient clipping, written out.

For a parameter p with gradient g at step t = 1, 2, ... (lr η, decay λ):

    m <- b1 m + (1 - b1) g                 first moment (EMA of gradients)
    v <- b2 v + (1 - b2) g^2               second moment (EMA of squared gradients)
    p <- p (1 - η λ) - η/(1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

The two (1 - b^t) factors undo the bias of EMAs that start at zero. The decay is
"decoupled": it shrinks p directly instead of being added to g, so it is not divided by
sqrt(v) (which would decay rarely-updated weights more). The operations are in
torch.optim.AdamW's order, so the two agree to float32 rounding
(parity_tests/test_adamw.py).

Moments in bfloat16 (`optim.moment_dtype`): m and v are stored rounded to bfloat16, the
update is computed in float32 from the unrounded new values. bfloat16 keeps float32's
exponent range (g^2 does not underflow) but 8 significant bits: an EMA step smaller than
half an ulp, (1 - b) |g - m| < 2^-9 |m|, is rounded away, so with b2 = 0.999 v can stall
(docs/precision.md).

Clipping: with n = ||g||_2 over all parameters together, every gradient is multiplied
by min(1, max_norm / (n + 1e-6)), exactly torch.nn.utils.clip_grad_norm_'s rule.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mylm_jax.model.params import path_name


class AdamWState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def adamw(learning_rate: float | Callable, b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8,
          weight_decay: float = 0.0, decay: Mapping[str, bool] | None = None,
          moment_dtype=jnp.float32) -> optax.GradientTransformation:
    """AdamW as an optax transformation; its update includes the lr and the decay.

    `decay` maps dotted parameter names to whether they are decayed (default True);
    `learning_rate` may be a schedule of the step count (0, 1, ...); `moment_dtype` is the
    storage dtype of m and v.
    """
    decay = decay or {}

    def init(params):
        zeros = lambda: jax.tree.map(lambda p: jnp.zeros_like(p, moment_dtype), params)  # noqa: E731
        return AdamWState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

    def update(grads, state, params):
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        t = (state.count + 1).astype(jnp.float32)
        step_size = lr / (1 - b1 ** t)
        bias2_sqrt = jnp.sqrt(1 - b2 ** t)
        f32 = lambda t: t.astype(jnp.float32)  # noqa: E731  (a no-op for float32 moments and params)
        grads = jax.tree.map(f32, grads)  # bfloat16 params have bfloat16 gradients: square in float32
        mu = jax.tree.map(lambda m, g: f32(m) + (1 - b1) * (g - f32(m)), state.mu, grads)  # torch's lerp
        nu = jax.tree.map(lambda v, g: b2 * f32(v) + (1 - b2) * g * g, state.nu, grads)

        def one(path, m, v, p):
            step = step_size * m / (jnp.sqrt(v) / bias2_sqrt + eps)
            return -lr * weight_decay * f32(p) - step if decay.get(path_name(path), True) else -step

        updates = jax.tree_util.tree_map_with_path(one, mu, nu, params)
        store = lambda tree: jax.tree.map(lambda t: t.astype(moment_dtype), tree)  # noqa: E731
        return updates, AdamWState(count=optax.safe_increment(state.count), mu=store(mu), nu=store(nu))

    return optax.GradientTransformation(init, update)


def global_norm(tree) -> jax.Array:
    """sqrt of the sum of squares of every entry of every leaf, in float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale all gradients together by min(1, max_norm / (||g|| + 1e-6)) (torch's rule)."""

    def update(grads, state, params=None):
        scale = jnp.minimum(1.0, max_norm / (global_norm(grads) + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
