"""MoE routing invariants, checked against a per-token numpy reference."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from mylm_jax.model.moe import MoE
from mylm_jax.variants import variant


def _moe(top_k=2, renorm=True, impl="dense", mlp="gelu", seed=0, **kw):
    kw = {"moe_block_rows": 8, **kw}  # small blocks: groups span several, padding in each
    cfg = variant("moe_gelu", n_experts=4, top_k=top_k, router_renormalize=renorm, moe_impl=impl,
                  mlp=mlp, **kw)
    return cfg, MoE(cfg, nnx.Rngs(seed))


def _x(n=24, d=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, d)), jnp.float32)


def _numpy_reference(cfg, moe, x):
    """Route each token on its own: softmax, top-k, (renormalise), weighted sum of its experts."""
    router = np.asarray(moe.router[...], np.float64)
    w_in = np.asarray(moe.w_in[...], np.float64).reshape(cfg.n_experts, cfg.d_model, -1)
    w_out = np.asarray(moe.w_out[...], np.float64)
    out = []
    for token in np.asarray(x, np.float64):
        logits = token @ router
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        chosen = np.argsort(-probs, kind="stable")[:cfg.top_k]
        weights = probs[chosen] / (probs[chosen].sum() if cfg.router_renormalize else 1.0)
        y = np.zeros(cfg.d_model)
        for e, w in zip(chosen, weights):
            h = token @ w_in[e]
            if cfg.mlp == "swiglu":
                gate, up = np.split(h, 2)
                a = gate / (1 + np.exp(-gate)) * up
            else:
                a = 0.5 * h * (1 + erf(h / math.sqrt(2)))
            y += w * (a @ w_out[e])
        out.append(y)
    return np.stack(out)


@pytest.mark.parametrize("impl", ["dense", "ragged", "blocked"])
@pytest.mark.parametrize("top_k, renorm, mlp", [(1, True, "gelu"), (2, False, "gelu"), (2, True, "swiglu"),
                                                (4, True, "gelu")])
def test_every_token_reaches_its_k_experts(impl, top_k, renorm, mlp):
    cfg, moe = _moe(top_k, renorm, impl, mlp)
    x = _x()
    y, _ = moe(x)
    np.testing.assert_allclose(np.asarray(y), _numpy_reference(cfg, moe, x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["ragged", "blocked"])
def test_grouped_implementations_match_dense_outputs_aux_and_gradients(impl):
    (_, dense), (_, ragged) = (_moe(impl=name, n_shared_experts=1, moe_block_rows=16)
                               for name in ("dense", impl))
    x = _x(n=100)  # 200 copies over 4 experts in blocks of 16: groups span several blocks

    def loss(m, x):
        y, aux = m(x)
        return (y ** 2).sum() + aux["losses"]["load_balance"] + aux["losses"]["router_z"], (y, aux)

    (la, (ya, auxa)), ga = nnx.value_and_grad(loss, has_aux=True)(dense, x)
    (lb, (yb, auxb)), gb = nnx.value_and_grad(loss, has_aux=True)(ragged, x)
    np.testing.assert_allclose(ya, yb, atol=1e-5)
    for kind in auxa:
        for key in auxa[kind]:
            np.testing.assert_allclose(auxa[kind][key], auxb[kind][key], atol=1e-6)
    for (path, a), (_, b) in zip(nnx.to_flat_state(ga), nnx.to_flat_state(gb)):
        np.testing.assert_allclose(a[...], b[...], atol=2e-5, rtol=1e-4, err_msg=str(path))


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_uniform_router_gives_load_balance_loss_k(top_k):
    cfg, moe = _moe(top_k=top_k)
    moe.router[...] = jnp.zeros_like(moe.router[...])  # every expert gets probability 1/E
    _, aux = moe(_x())
    # f_i sums to k over experts and P_i = 1/E, so E * sum_i f_i P_i = k exactly.
    assert float(aux["losses"]["load_balance"]) == pytest.approx(top_k, rel=1e-6)
    assert float(aux["losses"]["router_z"]) == pytest.approx(math.log(cfg.n_experts) ** 2, rel=1e-6)
    np.testing.assert_allclose(aux["metrics"]["expert_load"].sum(), 1.0, rtol=1e-6)


def test_collapsed_router_is_penalised():
    cfg, moe = _moe(top_k=1)
    router = np.zeros((cfg.d_model, cfg.n_experts), np.float32)
    moe.router[...] = jnp.asarray(router)
    balanced = float(moe(_x())[1]["losses"]["load_balance"])
    # A router that sends every token to expert 0 with high confidence: f = (1,0,0,0), P_0 ~ 1.
    x = jnp.ones((24, cfg.d_model))
    router[:, 0] = 1.0
    moe.router[...] = jnp.asarray(router)
    _, aux = moe(x)
    assert float(aux["losses"]["load_balance"]) > 3.9 > balanced
    np.testing.assert_allclose(aux["metrics"]["expert_load"], [1, 0, 0, 0])


def test_padding_tokens_do_not_count_in_aux():
    _, moe = _moe()
    x = _x(n=24)
    valid = jnp.arange(24) < 15
    y_all, aux_masked = moe(x, valid)
    y_valid, aux_valid = moe(x[:15])
    np.testing.assert_allclose(y_all[:15], y_valid, atol=1e-6)
    for kind in aux_valid:
        for key in aux_valid[kind]:
            np.testing.assert_allclose(aux_masked[kind][key], aux_valid[kind][key], rtol=1e-6)
