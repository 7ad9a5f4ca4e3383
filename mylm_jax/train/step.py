"""The jitted training and evaluation steps.

One optimizer step on a batch split into M microbatches (gradient accumulation):

    N      = number of valid target tokens in the whole batch (loss_mask summed)
    J_m    = (sum of token losses of microbatch m) / N  +  (w_lb * LB_m + w_z * Z_m) / M
    grads  = sum over m of dJ_m/dparams          (lax.scan over microbatches)
    loss   = sum over m of token losses / N      (token-weighted, never a mean of means)

so every token weighs the same however the batch is split. LB and Z are the MoE
load-balancing and router z-losses (mylm_jax/model/moe.py). Clipping, the schedules and
the AdamW / Muon updates happen in the optimizer (mylm_jax/optim/build.py).

Mixed precision: parameters and optimizer state stay float32; the model computes in
`model.dtype` (bfloat16 matmul inputs, float32 accumulation and softmax/loss).

Non-finite loss or gradient: the update is not applied (the state passes through
unchanged) and `finite` is 0 in the metrics; the loop then halts or goes on
(`train.on_nonfinite`). The state argument is donated: its buffers are reused for the
new state, so a step needs memory for one state, not two.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mylm_jax.config import Config
from mylm_jax.optim.adamw import global_norm
from mylm_jax.optim.schedules import lr_schedule
from mylm_jax.train.loss import cross_entropy_sum


def _model_outputs(model, mb):
    return model(mb["inputs"], mb["segment_ids"], mb["positions"])


def make_train_step(cfg: Config, graphdef, shardings, total_steps: int | None = None):
    M = cfg.train.microbatches
    w_lb, w_z = cfg.model.moe_aux_loss_weight, cfg.model.moe_z_loss_weight
    lr_at = lr_schedule(cfg.optim, total_steps or cfg.train.steps)
    muon_lr_at = lr_schedule(dataclasses.replace(cfg.optim, lr=cfg.optim.muon_lr), total_steps or cfg.train.steps)

    def step(state, batch):  # batch: dict of [M, B / M, T]
        old_leaves = jax.tree.leaves(state)  # before merge: the optimizer updates merged Variables in place
        model, optimizer = nnx.merge(graphdef, state)
        model_def, params, rest = nnx.split(model, nnx.Param, ...)
        n_tokens = jnp.maximum(batch["loss_mask"].sum(), 1.0)

        def objective(params, mb):
            logits, aux = _model_outputs(nnx.merge(model_def, params, rest), mb)
            loss_sum, _ = cross_entropy_sum(logits, mb["targets"], mb["loss_mask"])
            value = loss_sum / n_tokens
            if aux:
                value = value + (w_lb * aux["load_balance_loss"] + w_z * aux["router_z_loss"]) / M
            return value, (loss_sum, aux)

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        microbatch = lambda m: jax.tree.map(lambda x: x[m], batch)  # noqa: E731
        (_, (loss_sum, aux)), grads = grad_fn(params, microbatch(0))
        if M > 1:
            def accumulate(carry, mb):
                (_, (l, a)), g = grad_fn(params, mb)
                return jax.tree.map(jnp.add, carry, (g, l, a)), None
            rest_batches = jax.tree.map(lambda x: x[1:], batch)
            (grads, loss_sum, aux), _ = jax.lax.scan(accumulate, (grads, loss_sum, aux), rest_batches)

        loss = loss_sum / n_tokens
        grad_norm = global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        step_index = optimizer.step[...]
        optimizer.update(model, grads)
        new_state = nnx.state((model, optimizer))
        leaves, treedef = jax.tree.flatten(new_state)
        new_state = treedef.unflatten([jnp.where(finite, new, old) for new, old in zip(leaves, old_leaves)])
        metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, "tokens": n_tokens,
                   "lr": lr_at(step_index)}
        if cfg.optim.name == "muon":
            metrics["muon_lr"] = muon_lr_at(step_index)
        if aux:
            metrics.update(load_balance_loss=aux["load_balance_loss"] / M, router_z_loss=aux["router_z_loss"] / M,
                           expert_load=aux["expert_load"] / M)
        return new_state, metrics

    return jax.jit(step, donate_argnums=0, out_shardings=(shardings, None))


def make_eval_step(graphdef):
    """(state, batch [1, B, T]) -> (sum of token losses, valid tokens) for the val metrics."""

    def step(state, batch):
        batch = jax.tree.map(lambda x: x[0], batch)
        model, _ = nnx.merge(graphdef, state)
        logits, _ = _model_outputs(model, batch)
        return cross_entropy_sum(logits, batch["targets"], batch["loss_mask"])

    return jax.jit(step)
