"""The optimizer a config asks for: clipping, then AdamW and Muon on their parameter groups.

    tx = chain(clip_by_global_norm(optim.grad_clip),                 (if grad_clip > 0)
               partition({"adamw": AdamW(lr * schedule, decay mask),
                          "muon":  Muon(muon_lr * schedule, momentum warmup, views)},
                         by mylm_jax/optim/grouping.py's decision for each parameter))

Both learning rates follow the same schedule factor (mylm_jax/optim/schedules.py).
Use it with `nnx.Optimizer(model, tx, wrt=nnx.Param)`.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import jax.tree_util
import optax
from flax import nnx

from mylm_jax.config import OptimConfig
from mylm_jax.model.params import logical_axes, param_shapes, path_name
from mylm_jax.optim.adamw import adamw, clip_by_global_norm
from mylm_jax.optim.grouping import Assignment, assign_all
from mylm_jax.optim.muon import muon
from mylm_jax.optim.schedules import lr_factor


def param_assignments(model: nnx.Module, optim: OptimConfig) -> dict[str, Assignment]:
    """The grouping decision for every parameter of a (possibly abstract) model."""
    shapes, axes = param_shapes(model), logical_axes(model)
    return assign_all({name: (shapes[name], axes[name]) for name in shapes}, optim)


def muon_momentum(optim: OptimConfig) -> float | Callable:
    """Constant momentum, or a linear warmup from muon_momentum_start over the first steps."""
    W = optim.muon_momentum_warmup_steps
    if W == 0:
        return optim.muon_momentum
    start, end = optim.muon_momentum_start, optim.muon_momentum

    def momentum(step):
        frac = jnp.minimum(jnp.asarray(step, jnp.float32) / W, 1.0)
        return (1 - frac) * start + frac * end

    return momentum


def build_optimizer(optim: OptimConfig, total_steps: int,
                    assignments: dict[str, Assignment]) -> tuple[optax.GradientTransformation, dict]:
    """(tx, schedules): the transformation, and {"lr": step -> AdamW's lr, "muon_lr": step ->
    Muon's lr (muon only)}, the very functions tx uses, so a loop can log the lr it applied."""
    factor = lr_factor(optim, total_steps)
    schedules = {"lr": lambda step: optim.lr * factor(step)}
    decay = {name: a.weight_decay for name, a in assignments.items()}
    moment_dtype = jnp.dtype(optim.moment_dtype)
    groups = {"adamw": adamw(schedules["lr"], optim.beta1, optim.beta2, optim.eps, optim.weight_decay, decay,
                             moment_dtype)}
    if any(a.optimizer == "muon" for a in assignments.values()):
        schedules["muon_lr"] = lambda step: optim.muon_lr * factor(step)
        groups["muon"] = muon(schedules["muon_lr"], muon_momentum(optim),
                              optim.muon_nesterov, optim.muon_weight_decay, optim.muon_ns_steps,
                              ns_dtype=jnp.dtype(optim.muon_ns_dtype), adjust_lr=optim.muon_adjust_lr,
                              views={n: a.view for n, a in assignments.items() if a.view}, decay=decay,
                              moment_dtype=moment_dtype)

    def labels(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: assignments[path_name(path)].optimizer, params)

    tx = optax.partition(groups, labels)
    if optim.grad_clip > 0:
        tx = optax.chain(clip_by_global_norm(optim.grad_clip), tx)
    return tx, schedules
