"""Precision options (docs/precision.md): bfloat16 optimizer moments (`optim.moment_dtype`) and
bfloat16 parameters (`model.param_dtype`): what they store, what they compute, and that a run
with both checkpoints and resumes exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mylm_jax.config import ConfigError, config_from_dict
from mylm_jax.optim.adamw import adamw
from mylm_jax.optim.muon import muon
from tests.train_helpers import losses, run_mylm, tiny_config


def tree(seed: int):
    keys = jax.random.split(jax.random.key(seed), 2)
    return {"w": jax.random.normal(keys[0], (8, 6)), "v": jax.random.normal(keys[1], (4, 6))}  # matrices (Muon)


@pytest.mark.parametrize("make", [
    lambda dt: adamw(1e-2, weight_decay=0.1, moment_dtype=dt),
    lambda dt: muon(1e-2, weight_decay=0.1, moment_dtype=dt),
])
def test_bfloat16_moments_store_rounded_and_compute_in_float32(make):
    """Step 1 from zero moments: the update is computed in float32 from the unrounded new
    moments, so it equals the float32 optimizer's exactly; the stored moments are the float32
    ones rounded to bfloat16. Later steps differ by that rounding only."""
    params, grads = tree(0), tree(1)
    full, half = make(jnp.float32), make(jnp.bfloat16)
    s32, s16 = full.init(params), half.init(params)
    assert {x.dtype for x in jax.tree.leaves(s16) if x.ndim} == {jnp.dtype(jnp.bfloat16)}
    u32, s32 = full.update(grads, s32, params)
    u16, s16 = half.update(grads, s16, params)
    jax.tree.map(np.testing.assert_array_equal, u32, u16)
    moments = lambda s: [x for x in jax.tree.leaves(s) if x.ndim]  # noqa: E731  (not the step count)
    for a, b in zip(moments(s32), moments(s16)):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(a.astype(jnp.bfloat16), b)
    params = optax.apply_updates(params, u32)
    u32, _ = full.update(tree(2), s32, params)
    u16, _ = half.update(tree(2), s16, params)
    for a, b in zip(jax.tree.leaves(u32), jax.tree.leaves(u16)):
        assert not np.array_equal(a, b)
        # A few bfloat16 ulps (2^-8 each) of the update's scale (Newton-Schulz mixes the entries).
        np.testing.assert_allclose(b, a, atol=2e-2 * float(jnp.abs(a).max()))


def test_float32_moments_are_unchanged():
    """The default keeps the float32 arithmetic bit for bit (what the parity tests pin against
    torch): the same updates as the optimizer written without the option's casts."""
    params, grads = tree(0), tree(1)
    tx = adamw(1e-2, weight_decay=0.1)
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    m = jax.tree.map(lambda g: 0.1 * g, grads)
    v = jax.tree.map(lambda g: 0.05 * g * g, grads)
    expect = jax.tree.map(lambda m, v, p: -1e-2 * 0.1 * p - (1e-2 / 0.1) * m / (jnp.sqrt(v) / jnp.sqrt(0.05) + 1e-8),
                          m, v, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expect)


def test_bfloat16_params_lose_updates_under_half_an_ulp():
    """The documented cost of bfloat16 storage: p + u rounds back to p when |u| is under half
    an ulp of p (8 significant bits: between 2^-9 |p| and 2^-8 |p|; at p = 1, 2^-8 = 3.9e-3)."""
    p = jnp.array([1.0, 1.0, 1.0], jnp.bfloat16)
    u = jnp.array([1e-3, 3.5e-3, 5e-3], jnp.float32)
    new = optax.apply_updates(p, u)
    assert new.dtype == jnp.bfloat16
    assert list(np.asarray(new != p)) == [False, False, True]


def test_bad_precision_values_are_one_line_errors():
    for key, value in (("model", {"param_dtype": "float16"}), ("optim", {"moment_dtype": "fp8"})):
        with pytest.raises(ConfigError) as info:
            config_from_dict({key: value})
        assert "\n" not in str(info.value) and f"{key}.{next(iter(value))}" in str(info.value)


def test_twin_refuses_jax_only_precision():
    torch = pytest.importorskip("torch", reason="the twin needs torch (the torch extra)")
    from mylm_torch.model import GPT as TwinGPT
    from mylm_torch.optim import TwinOptimizer
    cfg = config_from_dict({"model": dict(vocab_size=32, max_seq_len=8, d_model=16, n_layers=1, n_heads=2),
                            "data": dict(seq_len=8)})
    for bad in ({"fp8": True}, {"param_dtype": "bfloat16"}):
        with pytest.raises(ValueError, match="JAX-only"):
            TwinGPT(config_from_dict({"model": {**cfg.model.__dict__, **bad}, "data": dict(seq_len=8)}).model)
    with pytest.raises(ValueError, match="JAX-only"):
        TwinOptimizer(torch.nn.Linear(2, 2), config_from_dict({"optim": {"moment_dtype": "bfloat16"}}).optim, 10)


def test_bfloat16_params_and_moments_checkpoint_and_resume_exactly(data_path, tmp_path):
    """Both options on: the checkpoint holds bfloat16 arrays, and a run killed after step 6
    and resumed from step 4 logs the straight run's losses bit for bit."""
    options = dict(model={"param_dtype": "bfloat16"}, optim={"moment_dtype": "bfloat16"})
    straight = tmp_path / "straight"
    result = run_mylm(["pretrain"], tiny_config(data_path, straight, **options), tmp_path / "s.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    import orbax.checkpoint as ocp
    stored = ocp.StandardCheckpointer().metadata(straight / "checkpoints" / "8" / "state").item_metadata
    floats = {str(a.dtype) for a in jax.tree.leaves(stored) if "int" not in str(a.dtype)}
    assert floats == {"bfloat16"}, floats  # parameters and both AdamW moments
    resumed = tmp_path / "resumed"
    cfg = tiny_config(data_path, resumed, **options)
    killed = run_mylm(["pretrain"], cfg, tmp_path / "r.yaml", env={"MYLM_TEST_KILL_AT_STEP": "6"})
    assert killed.returncode == -9 and max(losses(resumed)) == 6
    again = run_mylm(["pretrain", "--resume"], cfg, tmp_path / "r.yaml")
    assert again.returncode == 0, again.stderr[-3000:]
    assert losses(resumed) == losses(straight) and len(losses(straight)) == 8
