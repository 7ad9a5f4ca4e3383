"""The scanned layer stack (model.scan_layers) against the unrolled one, and remat.

Same weights in both layouts (mylm_jax/model/layout.py converts them): the jitted logits,
MoE aux terms and gradients agree within SCAN_ABS for every variant and every remat policy,
a training step updates them alike (AdamW and Muon), generation with the KV cache works,
and a checkpoint restores across the layouts in both directions, optimizer state included.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mylm_jax.config import ConfigError, config_from_dict, config_to_dict
from mylm_jax.model import layout
from mylm_jax.model.attention import init_cache
from mylm_jax.model.gpt import GPT
from mylm_jax.model.params import (flat_arrays, flat_params, load_flat_params, logical_axes, param_shapes,
                                   path_name, random_params)
from mylm_jax.variants import VARIANTS, small_config, variant
from parity_tests.tolerances import SCAN_ABS, SCAN_REL, compare
from tests.train_helpers import ROOT


def _pair(cfg, seed=0):
    """(unrolled model, scanned model) of `cfg` with the same random weights."""
    unrolled = nnx.eval_shape(lambda: GPT(dataclasses.replace(cfg, scan_layers=False), nnx.Rngs(0)))
    flat = random_params(param_shapes(unrolled), seed)
    load_flat_params(unrolled, flat)
    scfg = dataclasses.replace(cfg, scan_layers=True)
    scanned = nnx.eval_shape(lambda: GPT(scfg, nnx.Rngs(0)))
    load_flat_params(scanned, layout.to_scanned(flat, cfg))
    return unrolled, scanned


def _tokens(cfg, B=2, T=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T)), jnp.int32)


def _outputs(model, tokens, segment_ids):
    """Jitted logits, aux and the gradient (as unrolled flat arrays) of a loss using all of them."""
    def loss(m):
        logits, aux = m(tokens, segment_ids)
        return jnp.mean(jnp.square(logits)) + sum(aux["losses"].values(), 0.0), (logits, aux)

    grads, (logits, aux) = nnx.jit(nnx.grad(loss, has_aux=True))(model)
    return logits, aux, layout.to_unrolled(flat_arrays(grads), model.cfg)


def _assert_same(a, b):
    """Logits within SCAN_REL of their largest |value| (the parity suite's max rel err), the aux
    terms and every gradient within SCAN_ABS (parity_tests/tolerances.py says why)."""
    (la, aa, ga), (lb, ab, gb) = a, b
    compare("logits", la, lb, rel_tol=SCAN_REL)
    jax.tree.map(lambda x, y: compare("aux", x, y, abs_tol=SCAN_ABS), aa, ab)
    assert set(ga) == set(gb)
    for k in ga:
        compare(f"grad {k}", ga[k], gb[k], abs_tol=SCAN_ABS)


def test_segments_of_uniform_periodic_and_irregular_stacks():
    S = layout.Segment
    assert layout.segments(small_config(n_layers=6)) == (S(0, 1, 6),)
    assert layout.segments(small_config(n_layers=6, n_experts=4)) == (S(0, 1, 6),)  # MoE everywhere
    alternating = small_config(n_layers=6, n_experts=4, moe_layers=(1, 3, 5))
    assert layout.segments(alternating) == (S(0, 2, 3),)
    dense_first = small_config(n_layers=6, n_experts=4, moe_layers=(2, 3, 4, 5))
    assert layout.segments(dense_first) == (S(0, 1, 2), S(2, 1, 4))
    irregular = small_config(n_layers=4, n_experts=4, moe_layers=(0, 3))
    assert layout.segments(irregular) == (S(0, 1, 1), S(1, 1, 2), S(3, 1, 1))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_scanned_equals_unrolled(name):
    """Logits, aux and gradients; 4 layers (MoE on layers 0 and 2 where chosen: period 2)."""
    moe_layers = {"moe_layers": (0, 2)} if VARIANTS[name].get("moe_layers") else {}
    cfg = variant(name, n_layers=4, **moe_layers)
    unrolled, scanned = _pair(cfg)
    tokens = _tokens(cfg)
    segment_ids = jnp.asarray(np.repeat([[1] * 10 + [2] * 6], 2, axis=0), jnp.int32)  # two packed documents
    _assert_same(_outputs(unrolled, tokens, segment_ids), _outputs(scanned, tokens, segment_ids))


REMAT_CFG = variant("moe_swiglu_shared", n_layers=4, moe_layers=(2, 3))  # two runs: dense, then MoE


@functools.cache
def _remat_reference():
    unrolled, _ = _pair(REMAT_CFG)
    return _outputs(unrolled, _tokens(REMAT_CFG), None)


@pytest.mark.parametrize("remat, scan", [("dots", True), ("dots_saveable", True), ("full", True), ("full", False)])
def test_remat_changes_no_number(remat, scan):
    """Each policy against the unrolled model without remat; the stack cut in two segments."""
    assert len(layout.segments(REMAT_CFG)) == 2
    model = _pair(dataclasses.replace(REMAT_CFG, remat=remat))[scan]
    _assert_same(_remat_reference(), _outputs(model, _tokens(REMAT_CFG), None))


def test_layout_names_shapes_and_round_trip():
    cfg = variant("moe_swiglu_shared", n_layers=6, moe_layers=(1, 3, 5), scan_layers=True)
    scanned = nnx.eval_shape(lambda: GPT(cfg, nnx.Rngs(0)))
    unrolled = nnx.eval_shape(lambda: GPT(dataclasses.replace(cfg, scan_layers=False), nnx.Rngs(0)))
    assert layout.unrolled_shapes(param_shapes(scanned), cfg) == param_shapes(unrolled)
    assert layout.to_scanned(param_shapes(unrolled), cfg) == param_shapes(scanned)
    flat = random_params(param_shapes(unrolled), 3)
    back = layout.to_unrolled(layout.to_scanned(flat, cfg), cfg)
    assert set(back) == set(flat) and all(np.array_equal(back[k], flat[k]) for k in flat)
    assert param_shapes(scanned)["stack.0.1.mlp.w_out"] == (3, 4, 48, 32)  # MoE layers 1, 3, 5
    assert logical_axes(scanned)["stack.0.0.attn.q.kernel"] == ("layers", "embed", "heads", "head_dim")


def test_same_seed_same_initial_weights():
    cfg = variant("modern", n_layers=3)
    a = flat_params(GPT(cfg, nnx.Rngs(5)))
    b = layout.to_unrolled(flat_params(GPT(dataclasses.replace(cfg, scan_layers=True), nnx.Rngs(5))), cfg)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["gpt2", "moe_swiglu_shared"])
def test_cached_decoding_of_a_scanned_model(name):
    """Prefill then one token at a time: the scanned model's logits are the full forward's."""
    cfg = variant(name, n_layers=4, **({"moe_layers": (0, 2)} if name.startswith("moe") else {}))
    unrolled, scanned = _pair(cfg)
    B, T, prefix = 2, 10, 4
    tokens = np.asarray(_tokens(cfg, B, T))
    full, _ = unrolled(jnp.asarray(tokens))
    positions = np.tile(np.arange(T, dtype=np.int32), (B, 1))
    valid = np.ones((B, T), bool)
    decode = nnx.jit(lambda m, *a: m.decode(*a))
    cache = init_cache(cfg, B, T)
    logits, cache = decode(scanned, tokens[:, :prefix], positions[:, :prefix], valid[:, :prefix], cache)
    pieces = [logits]
    for t in range(prefix, T):
        logits, cache = decode(scanned, tokens[:, t:t + 1], positions[:, t:t + 1], valid[:, t:t + 1], cache)
        pieces.append(logits)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, rtol=0)


def _train_config(out_dir, scan: bool, optim: str, **model):
    return config_from_dict({
        "model": dict(small_config(n_layers=4, n_experts=4, moe_layers=(1, 3), attn_gate="headwise",
                                   **model).__dict__, scan_layers=scan),
        "data": dict(seq_len=16), "optim": dict(name=optim, warmup_steps=0, lr=1e-2),
        "train": dict(batch_size=2, out_dir=str(out_dir), steps=10)})


def _batch(cfg, seed):
    from mylm_jax.parallel import make_mesh, shard_batch
    rng = np.random.default_rng(seed)
    B, T = cfg.train.batch_size, cfg.data.seq_len
    inputs = rng.integers(0, cfg.model.vocab_size, (B, T)).astype(np.int32)
    host = {"inputs": inputs, "targets": np.roll(inputs, -1, 1), "loss_mask": np.ones((B, T), np.float32),
            "segment_ids": np.ones((B, T), np.int32), "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1))}
    return shard_batch(host, make_mesh(cfg.mesh))


def _unrolled_state(ts, cfg):
    """Every array of a training state (weights, moments, counters) by unrolled name."""
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(ts.state))[0]
    return layout.to_unrolled({path_name(p): np.asarray(v) for p, v in leaves}, cfg.model)


def test_training_steps_and_checkpoints_across_layouts(tmp_path, optim="muon"):
    """Two steps unrolled, saved, restored scanned (every array, moments included, equal), two more
    steps in each layout (equal within SCAN_ABS), and the scanned state restored unrolled. Muon: its
    per-matrix orthogonalisation must see each layer's matrix alone (AdamW: the FSDP test below)."""
    from mylm_jax.parallel import make_mesh
    from mylm_jax.train.checkpoint import Checkpointer
    from mylm_jax.train.run_dir import RunDir
    from mylm_jax.train.state import create_state
    from mylm_jax.train.step import make_train_step

    cfg_u, cfg_s = (_train_config(tmp_path / "run", scan, optim) for scan in (False, True))
    mesh = make_mesh(cfg_u.mesh)
    ts_u = create_state(cfg_u, mesh)
    step_u = make_train_step(cfg_u, ts_u)
    for seed in (0, 1):
        ts_u.state, _ = step_u(ts_u.state, _batch(cfg_u, seed))

    def save(ts, cfg, step):
        ckpt = Checkpointer(tmp_path / "run", async_save=False)
        ckpt.save(step, ts.state, {}, {"config": config_to_dict(cfg), "step": step, "tokenizer": None})
        ckpt.close()

    save(ts_u, cfg_u, 2)
    run = RunDir(tmp_path / "run", Checkpointer(tmp_path / "run", read_only=True))
    ts_s, _ = run.restore(None, cfg_s, mesh)
    saved, restored = _unrolled_state(ts_u, cfg_u), _unrolled_state(ts_s, cfg_s)
    assert set(saved) == set(restored) and all(np.array_equal(saved[k], restored[k]) for k in saved)
    assert param_shapes(ts_s.models()[0])["stack.0.1.mlp.w_in"][0] == 2  # really the scanned layout

    step_s = make_train_step(cfg_s, ts_s)
    for seed in (2, 3):
        ts_u.state, m_u = step_u(ts_u.state, _batch(cfg_u, seed))
        ts_s.state, m_s = step_s(ts_s.state, _batch(cfg_s, seed))
        assert abs(float(m_u["loss"]) - float(m_s["loss"])) <= SCAN_ABS
    a, b = _unrolled_state(ts_u, cfg_u), _unrolled_state(ts_s, cfg_s)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= SCAN_ABS * 10  # after 4 updates of lr 1e-2

    save(ts_s, cfg_s, 4)  # and back: scanned checkpoint -> unrolled model
    run = RunDir(tmp_path / "run", Checkpointer(tmp_path / "run", read_only=True))
    ts_back, _ = run.restore(4, cfg_u, mesh)
    back = _unrolled_state(ts_back, cfg_u)
    assert all(np.array_equal(back[k], b[k]) for k in b)


def test_bad_settings_are_one_line_errors():
    for key, value, expected in (("remat", "some", "expected one of 'none', 'dots'"),
                                 ("scan_layers", "yes", "expected bool")):
        with pytest.raises(ConfigError, match=expected) as e:
            config_from_dict({"model": {key: value}})
        assert "\n" not in str(e.value) and f"model.{key}" in str(e.value)


SHARDED = """
import json, sys
import numpy as np
sys.path.insert(0, ".")
from absl import logging
from mylm_jax.train.loop import pretrain
from mylm_jax.parallel import make_mesh
from mylm_jax.train.state import abstract_train_state
from tests.mesh_runs import moe_config
logging.set_verbosity(logging.ERROR)
data, out = sys.argv[1], sys.argv[2]
runs = {"one_device": (dict(data=1), False), "fsdp_scanned": (dict(data=2, fsdp=4), True)}
for name, (mesh, scan) in runs.items():
    cfg = moe_config(data, out + "/" + name, mesh, steps=6)
    cfg = cfg.__class__(**{**cfg.__dict__, "model": cfg.model.__class__(**{**cfg.model.__dict__,
                        "n_layers": 4, "moe_layers": (1, 3), "scan_layers": scan, "remat": "full" if scan else "none"})})
    if scan:
        ts, _ = abstract_train_state(cfg, make_mesh(cfg.mesh))
        print("SPEC", ts.plan.specs["stack.0.0.attn.q.kernel"], ts.plan.specs["stack.0.1.mlp.w_in"], flush=True)
    pretrain(cfg)
"""


def test_scanned_fsdp_training_gives_the_losses_of_one_unrolled_device(data_path, tmp_path):
    """8 host devices (data 2 x fsdp 4), scanned with full remat, vs one device unrolled: the
    "layers" axis stays whole, the FSDP split of every layer's weights is kept, same losses."""
    from tests.train_helpers import losses

    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run([sys.executable, "-c", SHARDED, data_path, str(tmp_path)], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    spec_line = next(line for line in result.stdout.splitlines() if line.startswith("SPEC"))
    assert spec_line == "SPEC P(None, 'fsdp', None, None) P(None, None, 'fsdp', None, None)", spec_line
    one, sharded = losses(tmp_path / "one_device"), losses(tmp_path / "fsdp_scanned")
    assert sorted(one) == sorted(sharded) == list(range(1, 7))
    np.testing.assert_allclose([sharded[s] for s in one], [one[s] for s in one], atol=1e-5, rtol=0)
