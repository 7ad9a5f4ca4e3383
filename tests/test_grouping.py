"""The optimizer grouping (mylm_jax/optim/grouping.py) and the optimizer builder."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mylm_jax.cli import main
from mylm_jax.config import OptimConfig
from mylm_jax.model.gpt import GPT
from mylm_jax.optim.build import build_optimizer, muon_momentum, param_assignments
from mylm_jax.optim.grouping import MatrixView, assign
from mylm_jax.variants import variant

MUON = OptimConfig(name="muon")


def _assignments(name: str, optim=MUON, **overrides):
    cfg = variant(name, **overrides)
    return cfg, param_assignments(nnx.eval_shape(lambda: GPT(cfg, nnx.Rngs(0))), optim)


def test_gpt2_groups():
    cfg, a = _assignments("gpt2")
    D, H, d, F = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.ffn_dim
    assert {n: (x.kind, x.optimizer, x.weight_decay) for n, x in a.items() if not n.startswith("blocks.1")} == {
        "embed": ("embedding", "adamw", False), "pos_embed": ("embedding", "adamw", False),
        "final_norm.scale": ("norm", "adamw", False), "final_norm.bias": ("norm", "adamw", False),
        "blocks.0.attn_norm.scale": ("norm", "adamw", False), "blocks.0.attn_norm.bias": ("norm", "adamw", False),
        "blocks.0.mlp_norm.scale": ("norm", "adamw", False), "blocks.0.mlp_norm.bias": ("norm", "adamw", False),
        "blocks.0.attn.q.kernel": ("matrix", "muon", True), "blocks.0.attn.q.bias": ("bias", "adamw", False),
        "blocks.0.attn.kv.kernel": ("matrix", "muon", True), "blocks.0.attn.kv.bias": ("bias", "adamw", False),
        "blocks.0.attn.out.kernel": ("matrix", "muon", True), "blocks.0.attn.out.bias": ("bias", "adamw", False),
        "blocks.0.mlp.fc.kernel": ("matrix", "muon", True), "blocks.0.mlp.fc.bias": ("bias", "adamw", False),
        "blocks.0.mlp.proj.kernel": ("matrix", "muon", True), "blocks.0.mlp.proj.bias": ("bias", "adamw", False),
    }
    matrices = {n.removeprefix("blocks.0."): x.view.matrix_shape for n, x in a.items()
                if x.view and n.startswith("blocks.0")}
    assert matrices == {"attn.q.kernel": (D, H * d), "attn.kv.kernel": (2, D, H * d),  # k and v apart
                        "attn.out.kernel": (H * d, D), "mlp.fc.kernel": (D, F), "mlp.proj.kernel": (F, D)}
    assert a["blocks.0.mlp.fc.kernel"].lr_multiplier == 2.0  # sqrt(fan_out / fan_in) = sqrt(4)
    assert a["blocks.0.mlp.proj.kernel"].lr_multiplier == 1.0


def test_moe_groups():
    cfg, a = _assignments("moe_swiglu_shared")
    D, E, F = cfg.d_model, cfg.n_experts, cfg.expert_dim
    assert (a["blocks.0.mlp.router"].kind, a["blocks.0.mlp.router"].optimizer) == ("score", "adamw")
    assert a["blocks.0.mlp.w_in"].view.matrix_shape == (E, 2, D, F)  # every expert's gate and up apart
    assert a["blocks.0.mlp.w_out"].view.matrix_shape == (E, F, D)
    assert a["blocks.0.mlp.shared.gate_up.kernel"].view.matrix_shape == (2, D, F)
    assert a["blocks.1.mlp.gate_up.kernel"].kind == "matrix"  # the dense layer between


def test_attention_gates_and_adamw_only():
    _, a = _assignments("gated_headwise")
    assert a["blocks.0.attn.gate.kernel"].kind == "score"  # one gate per head: [D, H]
    cfg, a = _assignments("gated_elementwise")
    assert a["blocks.0.attn.gate.kernel"].view.matrix_shape == (cfg.d_model, cfg.n_heads * cfg.head_dim)
    assert a["blocks.0.attn.q_norm.scale"].kind == "norm"
    _, a = _assignments("moe_ragged", optim=OptimConfig(name="adamw"))
    assert {x.optimizer for x in a.values()} == {"adamw"} and a["lm_head"].kind == "head"
    assert not any(x.view for x in a.values())


def test_no_decay_is_configurable():
    _, a = _assignments("gpt2_untied_nobias", optim=OptimConfig(no_decay=("head", "norm")))
    assert a["embed"].weight_decay and not a["lm_head"].weight_decay
    assert not a["final_norm.scale"].weight_decay and a["blocks.0.attn.q.kernel"].weight_decay


def test_unknown_parameter_is_a_clear_error():
    with pytest.raises(ValueError, match="'blocks.0.mystery'"):
        assign("blocks.0.mystery", (4, 4), ("embed", "mlp"), MUON)
    with pytest.raises(ValueError, match="residual stream"):
        assign("blocks.0.mlp.fc.kernel", (4, 4), ("mlp", "mlp"), MUON)


def test_matrix_view_round_trip():
    x = np.arange(2 * 3 * 4 * 5 * 6).reshape(2, 3, 4, 5, 6)
    view = MatrixView(x.shape, batch=(0, 2), fan_in=(1,), fan_out=(3, 4))
    m = view.to_matrix(x)
    assert m.shape == (2, 4, 3, 30) and m[1, 2, 0, 7] == x[1, 0, 2, 1, 1]
    np.testing.assert_array_equal(view.from_matrix(m), x)


def test_muon_momentum_warmup():
    assert muon_momentum(OptimConfig()) == 0.95
    mu = muon_momentum(OptimConfig(muon_momentum_warmup_steps=10, muon_momentum_start=0.85))
    np.testing.assert_allclose([mu(0), mu(5), mu(10), mu(100)], [0.85, 0.9, 0.95, 0.95], rtol=1e-6)


def test_zero_gradients_apply_only_the_configured_decay():
    """One step with zero gradients: only decayed parameters change, by exactly lr * wd * p."""
    cfg, a = _assignments("moe_ragged", tie_embeddings=False)
    optim = dataclasses.replace(MUON, warmup_steps=0, schedule="constant", weight_decay=0.5,
                                muon_weight_decay=0.25, grad_clip=1.0)
    model = nnx.eval_shape(lambda: GPT(cfg, nnx.Rngs(0)))
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), nnx.state(model, nnx.Param))
    tx, _ = build_optimizer(optim, 10, param_assignments(model, optim))
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    flat = {".".join(str(k) for k in path): v[...] for path, v in nnx.to_flat_state(updates)}
    for name, x in a.items():
        lr, wd = (optim.muon_lr, optim.muon_weight_decay) if x.optimizer == "muon" else (optim.lr, 0.5)
        np.testing.assert_allclose(flat[name], -lr * wd * x.weight_decay, rtol=1e-6, err_msg=name)


def test_cli_prints_the_grouping(capsys):
    assert main(["optim", "--config", "configs/moe_tiny.yaml", "optim.name=muon"]) == 0
    out = capsys.readouterr().out
    assert "blocks.1.mlp.w_in" in out and "16 x [256, 256]" in out and "muon:" in out
    assert main(["optim", "optim.no_decay=[bogus]"]) == 2
    assert "optim.no_decay[0]='bogus'" in capsys.readouterr().err
