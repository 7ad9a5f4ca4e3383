"""The train step: gradient accumulation is token-weighted and equals one big batch; the
non-finite guard leaves the state unchanged; the mesh and batch checks."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from mylm_jax.config import Config, ConfigError, MeshConfig, TrainConfig, config_from_dict
from mylm_jax.parallel import make_mesh, mesh_shape, plan_params, shard_batch
from mylm_jax.train.state import create_state
from mylm_jax.train.step import k_step_batch, make_train_step, make_train_steps

B, T = 4, 16


def _config(**train) -> Config:
    return config_from_dict({
        "model": dict(vocab_size=64, max_seq_len=T, d_model=32, n_layers=2, n_heads=4, position="rope",
                      norm="rmsnorm", mlp="swiglu", bias=False),
        "data": dict(seq_len=T), "optim": dict(lr=1e-2, warmup_steps=0, eps=1.0),
        "train": dict(steps=10, batch_size=B, **train)})


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((B, T), np.float32)
    mask[0, 4:] = 0  # rows with very different numbers of valid tokens: a mean of
    mask[2, 10:] = 0  # microbatch means would weigh them wrongly
    return {"inputs": rng.integers(0, 64, (B, T), dtype=np.int32),
            "targets": rng.integers(0, 64, (B, T), dtype=np.int32), "loss_mask": mask,
            "segment_ids": np.ones((B, T), np.int32), "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1))}


def _one_step(cfg, batch):
    mesh = make_mesh(cfg.mesh)
    ts = create_state(cfg, mesh)
    step = make_train_step(cfg, ts)
    state, metrics = step(ts.state, shard_batch(batch, mesh, cfg.train.microbatches))
    params = jax.tree.leaves(state[0])
    return jax.device_get(metrics), [np.asarray(p) for p in params]


def test_microbatches_equal_one_batch():
    """The loss is the sum over all valid tokens / their number, however the batch is split.
    (optim.eps=1 makes Adam's first step ~ lr * g, smooth in g, so the updated weights compare
    the gradients; with a tiny eps the step is ~ lr * sign(g), which rounding can flip.)"""
    batch = _batch()
    m1, p1 = _one_step(_config(microbatches=1), batch)
    m4, p4 = _one_step(_config(microbatches=4), batch)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
    assert float(m1["tokens"]) == batch["loss_mask"].sum()
    for a, b in zip(p1, p4):
        np.testing.assert_allclose(b, a, atol=1e-8)


def test_non_finite_update_is_not_applied():
    cfg = _config()
    mesh = make_mesh(cfg.mesh)
    ts = create_state(cfg, mesh)
    before = [np.asarray(p) for p in jax.tree.leaves(ts.state)]
    step = make_train_step(cfg, ts)
    batch = _batch()
    batch["loss_mask"] = batch["loss_mask"] * np.float32(np.nan)  # a NaN loss
    state, metrics = step(ts.state, shard_batch(batch, mesh))
    assert not bool(metrics["finite"])
    for a, b in zip(before, jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(b), a)


def _single_calls(cfg, batches):
    """The reference: one make_train_step call per batch."""
    mesh = make_mesh(cfg.mesh)
    ts = create_state(cfg, mesh)
    step, state, history = make_train_step(cfg, ts), ts.state, []
    for batch in batches:
        state, metrics = step(state, shard_batch(batch, mesh, cfg.train.microbatches))
        history.append(jax.device_get(metrics))
    return [np.asarray(x) for x in jax.tree.leaves(state)], history


def _k_step_calls(cfg, batches, K):
    """The same batches through make_train_steps, K per call; the last call padded (inactive)."""
    mesh = make_mesh(cfg.mesh)
    ts = create_state(cfg, mesh)
    steps, state, history, M = make_train_steps(cfg, ts, K), ts.state, [], cfg.train.microbatches
    halted = False  # carried from call to call, as the loop does
    for start in range(0, len(batches), K):
        host, active = k_step_batch(batches[start:start + K], K)
        state, metrics, halted = steps(state, shard_batch(host, mesh, K * M), active, halted)
        metrics = jax.device_get(metrics)
        history += [{k: v[i] for k, v in metrics.items()} for i in range(active.sum())]
    return [np.asarray(x) for x in jax.tree.leaves(state)], history


@pytest.mark.parametrize("microbatches", [1, 2])
def test_k_steps_in_one_call_equal_k_single_calls_bit_for_bit(microbatches):
    """What `mylm pretrain` runs (train.steps_per_call): 5 steps as a call of 3 and a call of 2
    (+ 1 padding step, computed and not applied) give the very same state and metrics as 5
    single steps: the optimizer's step count and moments included, so padding did nothing."""
    cfg = _config(microbatches=microbatches)
    batches = [_batch(seed) for seed in range(5)]
    reference, ref_history = _single_calls(cfg, batches)
    leaves, history = _k_step_calls(cfg, batches, K=3)
    assert len(history) == 5
    for a, b in zip(reference, leaves):
        np.testing.assert_array_equal(b, a)
    for a, b in zip(ref_history, history):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)


@pytest.mark.parametrize("policy", ["halt", "skip"])
@pytest.mark.parametrize("K", [4, 2])
def test_a_non_finite_step_inside_a_call(policy, K):
    """Step 2 of 4 has a NaN loss, in one call of 4 or the first of two calls of 2. skip: like
    single steps, 1, 3 and 4 are applied. halt: nothing after step 2 is applied either, in its
    call or the next (the loop reads a call's metrics after queueing the next), so the state
    is the last good one (after step 1), where single steps would have stopped."""
    cfg = _config(on_nonfinite=policy)
    batches = [_batch(seed) for seed in range(4)]
    batches[1]["loss_mask"] = batches[1]["loss_mask"] * np.float32(np.nan)
    leaves, history = _k_step_calls(cfg, batches, K=K)
    assert [bool(h["finite"]) for h in history] == [True, False, True, True]
    expected, _ = _single_calls(cfg, batches[:1] if policy == "halt" else batches)
    for a, b in zip(expected, leaves):
        np.testing.assert_array_equal(b, a)


def test_mesh_and_batch_checks():
    assert mesh_shape(MeshConfig(data=-1, tensor=2), 8) == {"data": 4, "fsdp": 1, "tensor": 2, "expert": 1}
    with pytest.raises(ConfigError, match="multiply to 6, but there are 8 devices"):
        mesh_shape(MeshConfig(data=3, tensor=2), 8)
    with pytest.raises(ConfigError, match="not divisible"):
        mesh_shape(MeshConfig(data=-1, tensor=3), 8)
    with pytest.raises(ConfigError, match="microbatches"):
        dataclasses.replace(TrainConfig(), batch_size=6, microbatches=4)


def test_sharding_plan_says_what_is_sharded_and_what_is_replicated():
    """The plan the trainer prints at start: every sharded parameter (layers grouped), the
    replicated ones, and each axis a rule would split but the mesh axis does not divide."""
    mesh = SimpleNamespace(shape={"data": 1, "fsdp": 4, "tensor": 2, "expert": 1})
    shapes = {"embed": (99, 64), "blocks.0.attn.q.kernel": (64, 4, 16), "blocks.1.attn.q.kernel": (64, 4, 16),
              "final_norm.scale": (64,)}
    axes = {"embed": ("vocab", "embed"), "blocks.0.attn.q.kernel": ("embed", "heads", "head_dim"),
            "blocks.1.attn.q.kernel": ("embed", "heads", "head_dim"), "final_norm.scale": (None,)}
    text = plan_params(shapes, axes, mesh).describe(mesh)
    assert text.splitlines()[0] == "sharding plan on mesh data=1 fsdp=4 tensor=2 expert=1:"
    assert "blocks.*.attn.q.kernel" in text and "blocks.0" not in text  # layers grouped
    assert "P('fsdp', 'tensor', None)" in text
    assert "replicated on every device" in text and "final_norm.scale" in text
    assert "embed: vocab=99 not divisible by tensor=2" in text
