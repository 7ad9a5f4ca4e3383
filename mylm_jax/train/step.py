"""The jitted training and evaluation steps.

`mylm pretrain` runs make_train_steps: K optimizer steps per call (train.steps_per_call), a
lax.scan of the single step below over K batches, with the same results as K calls.

One optimizer step on a batch split into M microbatches (gradient accumulation):

    grads  = sum over m of dJ_m/dparams          (lax.scan over microbatches)
    loss   = sum over m of token losses / N      (token-weighted, never a mean of means)

with J_m the objective of mylm_jax/train/loss.py (cross-entropy plus the model's
weighted extra terms), so every token weighs the same however the batch is split.
Clipping, the schedules and the AdamW / Muon updates happen in the optimizer
(mylm_jax/optim/build.py). The model's extra loss terms and metrics come back in the
metrics under their own names (a term `t` as `t_loss`), averaged over the microbatches:
the step never names them.

Mixed precision: by default parameters and optimizer state stay float32 and the model
computes in `model.dtype` (bfloat16 matmul inputs, float32 accumulation and softmax/loss).
`model.param_dtype` and `optim.moment_dtype` may store them in bfloat16 instead, and
`model.fp8` runs the Dense matmuls in float8 (docs/precision.md); the step is the same.

Non-finite loss or gradient: the update is not applied (the state passes through
unchanged) and `finite` is 0 in the metrics; the loop then halts or goes on
(`train.on_nonfinite`). The state argument is donated: its buffers are reused for the
new state, so a step needs memory for one state, not two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mylm_jax.config import Config
from mylm_jax.optim.adamw import global_norm
from mylm_jax.train.loss import cross_entropy_sum, loss_weights, objective
from mylm_jax.train.state import TrainState


def _model_outputs(model, mb):
    return model(mb["inputs"], mb["segment_ids"], mb["positions"])


def _step_function(cfg: Config, ts: TrainState):
    """The optimizer step as a plain function (state, batch [M, B / M, T], allowed) -> (state, metrics).

    allowed (a traced bool): when false the update is computed but not applied, exactly as for
    a non-finite loss; the K-step call uses it for the padding steps of a short call and, with
    train.on_nonfinite=halt, for the steps after a non-finite one."""
    graphdef, schedules, M = ts.graphdef, ts.schedules, cfg.train.microbatches
    weights = loss_weights(cfg.loss)

    def step(state, batch, allowed):
        old_leaves = jax.tree.leaves(state)  # before merge: the optimizer updates merged Variables in place
        model, optimizer = nnx.merge(graphdef, state)
        model_def, params, rest = nnx.split(model, nnx.Param, ...)
        n_tokens = jnp.maximum(batch["loss_mask"].sum(), 1.0)

        def microbatch_objective(params, mb):
            outputs = _model_outputs(nnx.merge(model_def, params, rest), mb)
            value, loss_sum = objective(outputs, mb, weights, n_tokens, M)
            return value, (loss_sum, outputs[1])

        grad_fn = jax.value_and_grad(microbatch_objective, has_aux=True)
        if M == 1:  # no accumulation: the gradient is traced once, not twice (eval_shape + scan)
            (_, (loss_sum, aux)), grads = grad_fn(params, jax.tree.map(lambda x: x[0], batch))
        else:
            def accumulate(carry, mb):
                (_, (l, a)), g = grad_fn(params, mb)
                return jax.tree.map(jnp.add, carry, (g, l, a)), None

            # One scan over all M microbatches, from zeros: the gradient is compiled once.
            (_, (loss_shape, aux_shape)), grads_shape = jax.eval_shape(grad_fn, params,
                                                                       jax.tree.map(lambda x: x[0], batch))
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads_shape, loss_shape, aux_shape))
            (grads, loss_sum, aux), _ = jax.lax.scan(accumulate, zeros, batch)

        loss = loss_sum / n_tokens
        grad_norm = global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        step_index = optimizer.step[...]
        optimizer.update(model, grads)
        new_state = nnx.state((model, optimizer))
        leaves, treedef = jax.tree.flatten(new_state)
        apply = finite & allowed
        new_state = treedef.unflatten([jnp.where(apply, new, old) for new, old in zip(leaves, old_leaves)])
        metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, "tokens": n_tokens,
                   **{name: schedule(step_index) for name, schedule in schedules.items()},
                   **{f"{name}_loss": term / M for name, term in aux.get("losses", {}).items()},
                   **{name: value / M for name, value in aux.get("metrics", {}).items()}}
        return new_state, metrics

    return step


def make_train_step(cfg: Config, ts: TrainState):
    """(state, batch [M, B / M, T] per field) -> (new state, metrics); jitted, state donated.

    The metrics hold the learning rates the optimizer applied at this step (its own
    schedules, TrainState.schedules)."""
    step = _step_function(cfg, ts)
    return jax.jit(lambda state, batch: step(state, batch, True), donate_argnums=0,
                   out_shardings=(ts.shardings, None))


def make_train_steps(cfg: Config, ts: TrainState, K: int):
    """Up to K optimizer steps in one call (what `mylm pretrain` runs; train.steps_per_call):

        (state, batch [K * M, B / M, T] per field, active [K] bool, halted bool)
            -> (new state, metrics [K] per field, halted)

    a lax.scan of the single step over K batches. Step k is applied when active[k] (a call
    near an evaluation or a checkpoint does fewer than K steps: its padding steps compute and
    are thrown away), and, with train.on_nonfinite=halt, when no step before it was
    non-finite: `halted` is carried from call to call on the device (the loop reads a call's
    metrics only after dispatching the next), so the state stays the last good one however
    many calls were queued. The results are bit for bit those of K calls of make_train_step
    (tests/test_train_step.py): one compiled step body, the same arithmetic. What K buys is
    the per-call cost paid once: dispatch, batch placement, reading back metrics, and
    XLA:CPU's fresh scratch memory per call."""
    step, halt = _step_function(cfg, ts), cfg.train.on_nonfinite == "halt"
    M = cfg.train.microbatches

    def steps(state, batch, active, halted):
        batch = jax.tree.map(lambda x: x.reshape(K, M, *x.shape[1:]), batch)

        def body(carry, inputs):
            state, halted = carry
            one_batch, is_active = inputs
            state, metrics = step(state, one_batch, is_active & ~halted)
            if halt:
                halted = halted | (is_active & ~metrics["finite"])
            return (state, halted), metrics

        (state, halted), metrics = jax.lax.scan(body, (state, jnp.asarray(halted, bool)), (batch, active))
        return state, metrics, halted

    return jax.jit(steps, donate_argnums=0, out_shardings=(ts.shardings, None, None))


def k_step_batch(batches: list[dict], K: int) -> tuple[dict, np.ndarray]:
    """n <= K host batches [B, T] -> (one host batch [K * B, T], the [K] mask of the n real steps),
    for make_train_steps: padded to K with copies of the last batch (steps not applied)."""
    n = len(batches)
    batches = batches + [batches[-1]] * (K - n)
    host = {key: np.concatenate([b[key] for b in batches]) if K > 1 else batches[0][key] for key in batches[0]}
    return host, np.arange(K) < n


def make_eval_step(graphdef):
    """(state, batch [1, B, T]) -> (sum of token losses, valid tokens) for the val metrics."""

    def step(state, batch):
        batch = jax.tree.map(lambda x: x[0], batch)
        model, _ = nnx.merge(graphdef, state)
        logits, _ = _model_outputs(model, batch)
        return cross_entropy_sum(logits, batch["targets"], batch["loss_mask"])

    return jax.jit(step)
