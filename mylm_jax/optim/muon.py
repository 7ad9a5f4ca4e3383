"""Muon: momentum, then orthogonalise each matrix update with a Newton-Schulz iteration.

For a weight matrix W with gradient G (Jordan et al. 2024; torch.optim.Muon):

    B  <- mu B + (1 - mu) G                       momentum buffer (an EMA of gradients)
    U  <- (1 - mu) G + mu B   (Nesterov)   or  B
    O  <- NewtonSchulz(U) ~ U V^T                 (U = U S V^T: all singular values -> ~1)
    W  <- W (1 - lr wd) - lr * ratio(W) * O       decoupled weight decay; per-matrix lr ratio

Orthogonalising makes every direction of the update move by about the same amount,
however skewed the gradient's spectrum. The quintic iteration
X <- a X + (b A + c A^2) X with A = X X^T and (a, b, c) = (3.4445, -4.7750, 2.0315)
pushes singular values of the Frobenius-normalised input (all <= 1) towards [0.7, 1.2]
in 5 steps; it runs on the smaller Gram matrix (transposing when rows > cols).

Matrices are in JAX's kernel layout [fan_in, fan_out] (the transpose of torch's
nn.Linear weight). `ratio`:
    original         sqrt(max(1, fan_out / fan_in))        (Keller Jordan's Muon)
    match_rms_adamw  0.2 * sqrt(max(fan_in, fan_out))      (Moonlight: update RMS ~ AdamW's)
Leading axes (stacked MoE experts [E, fan_in, fan_out]) are a batch: each expert's
matrix is orthogonalised on its own. A model's kernels that are not plain matrices
([D, H, d], [D, 2, K, d], ...) are seen as such through the `views` that
mylm_jax/optim/grouping.py gives them.
"""

from __future__ import annotations

from typing import Callable, Literal, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mylm_jax.model.params import path_name
from mylm_jax.optim.grouping import MatrixView, lr_ratio

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
AdjustLr = Literal["original", "match_rms_adamw"]


def newton_schulz(G: jax.Array, steps: int = 5, coefficients=NS_COEFFICIENTS, eps: float = 1e-7,
                  dtype=jnp.float32) -> jax.Array:
    """Approximately orthogonalise the last two axes of G (returned in `dtype`)."""
    a, b, c = coefficients
    X = G.astype(dtype)
    transposed = G.shape[-2] > G.shape[-1]
    if transposed:  # iterate on the smaller Gram matrix
        X = X.swapaxes(-1, -2)
    norm = jnp.sqrt(jnp.sum(jnp.square(X.astype(jnp.float32)), axis=(-2, -1), keepdims=True))
    X = X / jnp.maximum(norm, eps).astype(dtype)  # Frobenius norm 1 => spectral norm <= 1
    def mm(x, y):  # accumulate in float32, as torch's (b)addmm does before rounding once
        return jnp.matmul(x, y, preferred_element_type=jnp.float32)

    for _ in range(steps):
        A = mm(X, X.swapaxes(-1, -2)).astype(dtype)
        B = (b * A.astype(jnp.float32) + c * mm(A, A)).astype(dtype)
        X = (a * X.astype(jnp.float32) + mm(B, X)).astype(dtype)
    return X.swapaxes(-1, -2) if transposed else X


class MuonState(NamedTuple):
    count: jax.Array
    momentum: optax.Updates


def muon(learning_rate: float | Callable, momentum: float | Callable = 0.95, nesterov: bool = True,
         weight_decay: float = 0.0, ns_steps: int = 5, ns_coefficients=NS_COEFFICIENTS,
         eps: float = 1e-7, ns_dtype=jnp.float32, adjust_lr: AdjustLr = "original",
         views: Mapping[str, MatrixView] | None = None, decay: Mapping[str, bool] | None = None,
         moment_dtype=jnp.float32) -> optax.GradientTransformation:
    """Muon as an optax transformation over a tree of matrices.

    A leaf is [..., fan_in, fan_out] unless `views` (by dotted parameter name) says how to
    see it as such; `decay` (by name, default True) switches weight decay off per leaf.
    `learning_rate` and `momentum` may be schedules of the step count. The returned
    update already includes the learning rate and the weight decay (params + update =
    the new params), as torch.optim.Muon's step does. The momentum is stored in
    `moment_dtype` (bfloat16: rounded after each update, which is computed in float32).
    """
    views, decay = views or {}, decay or {}

    def init(params):
        return MuonState(count=jnp.zeros([], jnp.int32),
                         momentum=jax.tree.map(lambda p: jnp.zeros_like(p, moment_dtype), params))

    def update(grads, state, params):
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        mu = momentum(state.count) if callable(momentum) else momentum
        # The same float operations as torch's lerp: B + (1 - mu)(G - B) and B - (1 - mu)(B - G).
        new_buf = jax.tree.map(lambda b, g: b.astype(jnp.float32) + (1 - mu) * (g - b.astype(jnp.float32)),
                               state.momentum, grads)

        def one(path, g, b, p):
            name = path_name(path)
            view = views.get(name)
            u = b - (1 - mu) * (b - g) if nesterov else b
            u = view.to_matrix(u) if view else u
            o = newton_schulz(u, ns_steps, ns_coefficients, eps, ns_dtype).astype(jnp.float32)
            step = lr * lr_ratio(o.shape, adjust_lr) * (view.from_matrix(o) if view else o)
            return -lr * weight_decay * p - step if decay.get(name, True) else -step

        updates = jax.tree_util.tree_map_with_path(one, grads, new_buf, params)
        stored = jax.tree.map(lambda b: b.astype(moment_dtype), new_buf)
        return updates, MuonState(count=optax.safe_increment(state.count), momentum=stored)

    return optax.GradientTransformation(init, update)
