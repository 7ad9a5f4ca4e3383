"""The optimizer grouping: the twin's own decisions (mylm_torch/grouping.py) against the JAX
side's (mylm_jax/optim/grouping.py), parameter by parameter.

Each side decides from its own model's structure (JAX: names and logical axes of the
kernels; the twin: torch names, [out, in] shapes and the config). Matched through the
converter's table (mylm_torch.convert.param_layout: JAX name -> torch name), they must
agree on every parameter of every variant, for every optimizer config below:

    kind, optimizer (adamw / muon), weight decay on / off     equal
    Muon's matrices: JAX [*batch, fan_in, fan_out]            == torch [*batch, fan_out, fan_in]
                                                                 with the last two swapped
    Muon's lr multiplier                                      within LR_MULT_ABS

and the twin must decide for exactly the torch model's parameters. So a rule that one
side gets wrong (a fused k|v not split, a gate of the wrong kind, fan-in and fan-out
swapped in an lr ratio) shows here, without a training run.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flax import nnx

import mylm_torch.grouping as twin_grouping
from mylm_jax.config import ModelConfig, OptimConfig
from mylm_jax.model.gpt import GPT as JaxGPT
from mylm_jax.model.params import build_with_random_params, flat_params
from mylm_jax.optim.build import param_assignments
from mylm_jax.optim.grouping import Assignment
from mylm_jax.variants import VARIANTS
from mylm_torch.convert import jax_to_torch, param_layout
from mylm_torch.grouping import Decision, decide_all
from mylm_torch.model import GPT as TorchGPT
from parity_tests.conftest import parity_config

LR_MULT_ABS = 1e-12  # the same formula on the same two integers: equal but for float rounding

OPTIMIZERS = {
    "adamw": OptimConfig(name="adamw"),
    "muon": OptimConfig(name="muon"),
    # Moonlight's lr ratio and a non-default decay mask (norms decay too).
    "muon_rms_decay": OptimConfig(name="muon", muon_adjust_lr="match_rms_adamw", no_decay=("embedding", "bias")),
}


def jax_assignments(cfg: ModelConfig, optim: OptimConfig) -> dict[str, Assignment]:
    return param_assignments(nnx.eval_shape(lambda: JaxGPT(cfg, nnx.Rngs(0))), optim)


def disagreements(assignments: dict[str, Assignment], decisions: dict[str, Decision],
                  cfg: ModelConfig) -> list[str]:
    """Every parameter where the twin's decision differs from JAX's, one line each (empty: agree)."""
    layout = param_layout(cfg)
    jax_by_torch_name = {layout[name].torch_name: (name, a) for name, a in assignments.items()}
    problems = [f"{n}: the twin decides, JAX has no such parameter" for n in decisions.keys() - jax_by_torch_name]
    problems += [f"{n}: JAX decides, the twin does not" for n in jax_by_torch_name.keys() - decisions.keys()]
    for torch_name in sorted(jax_by_torch_name.keys() & decisions.keys()):
        name, a = jax_by_torch_name[torch_name]
        d = decisions[torch_name]
        jax_matrices = None
        if a.view:  # JAX [*batch, fan_in, fan_out] -> torch [*batch, fan_out, fan_in]
            *batch, fan_in, fan_out = a.view.matrix_shape
            jax_matrices = (*batch, fan_out, fan_in)
        jax_says = (a.kind, a.optimizer, a.weight_decay, jax_matrices)
        twin_says = (d.kind, d.optimizer, d.weight_decay, d.matrix_shape)
        if jax_says != twin_says or abs(a.lr_multiplier - d.lr_multiplier) > LR_MULT_ABS:
            problems.append(f"{name} / {torch_name}: JAX {jax_says} lr x{a.lr_multiplier}, "
                            f"twin {twin_says} lr x{d.lr_multiplier}")
    return problems


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("name", list(VARIANTS))
def test_twin_groups_as_jax_does(name, optimizer):
    cfg, optim = parity_config(name), OPTIMIZERS[optimizer]
    model = TorchGPT(cfg)
    decisions = decide_all(model, optim)
    assert list(decisions) == [n for n, _ in model.named_parameters()]
    assert disagreements(jax_assignments(cfg, optim), decisions, cfg) == []
    assert any(d.optimizer == "muon" for d in decisions.values()) == (optim.name == "muon")


_right_kind, _right_ratio = twin_grouping.param_kind, twin_grouping.lr_ratio
WRONG_RULES = {  # a rule of mylm_torch/grouping.py, broken: (its name there, the wrong one, a parameter it changes)
    "gate_up not split": ("FUSED", ("attn.kv.weight",), "blocks.0.mlp.gate_up.weight"),
    "lr ratio with fan-in and fan-out swapped": (
        "lr_ratio", lambda shape, adjust: _right_ratio(shape[::-1], adjust), "blocks.0.mlp.gate_up.weight"),
    "headwise gate as a matrix": (
        "param_kind", lambda name, cfg: "matrix" if name.endswith("attn.gate.weight") else _right_kind(name, cfg),
        "blocks.0.attn.gate.weight"),
}


@pytest.mark.parametrize("wrong_rule", list(WRONG_RULES))
def test_a_wrong_twin_rule_is_caught(wrong_rule, monkeypatch):
    cfg, optim = parity_config("gated_headwise"), OPTIMIZERS["muon"]
    assignments, model = jax_assignments(cfg, optim), TorchGPT(cfg)
    assert disagreements(assignments, decide_all(model, optim), cfg) == []
    rule, wrong, changed = WRONG_RULES[wrong_rule]
    monkeypatch.setattr(twin_grouping, rule, wrong)
    problems = disagreements(assignments, decide_all(model, optim), cfg)
    assert any(f"/ {changed}:" in p for p in problems), problems


@pytest.mark.parametrize("field, value", [("weight_decay", True), ("lr_multiplier", 1.0 + 1e-9)])
def test_a_wrong_decision_is_caught(field, value):
    """A norm that decays; an lr multiplier off by 1e-9 (the tolerance is 1e-12)."""
    cfg, optim = parity_config("gpt2"), OPTIMIZERS["muon"]
    decisions = decide_all(TorchGPT(cfg), optim)
    name = "blocks.1.mlp.proj.weight" if field == "lr_multiplier" else "final_norm.weight"
    assert getattr(decisions[name], field) != value  # proj [D, F]: fan_out < fan_in, ratio 1
    decisions[name] = dataclasses.replace(decisions[name], **{field: value})
    problems = disagreements(jax_assignments(cfg, optim), decisions, cfg)
    assert len(problems) == 1 and f"/ {name}:" in problems[0], problems


def test_a_missing_or_extra_parameter_is_caught():
    cfg, optim = parity_config("moe_swiglu_shared"), OPTIMIZERS["muon"]
    assignments, decisions = jax_assignments(cfg, optim), decide_all(TorchGPT(cfg), optim)
    dropped = dict(decisions)
    del dropped["blocks.0.mlp.w_in"]
    assert disagreements(assignments, dropped, cfg) == ["blocks.0.mlp.w_in: JAX decides, the twin does not"]
    extra = {**decisions, "blocks.0.mlp.mystery": Decision("matrix", "muon", True, (4, 4), 1.0)}
    assert disagreements(assignments, extra, cfg) == [
        "blocks.0.mlp.mystery: the twin decides, JAX has no such parameter"]


@pytest.mark.parametrize("name", ["gpt2", "gated_elementwise", "moe_swiglu_shared", "moe_gelu"])
def test_twin_sees_the_same_matrices(name):
    """Equal shapes are not enough: for every Muon parameter, the twin's reshape of its torch
    weight holds exactly the transposes of the matrices JAX's MatrixView cuts from the kernel
    (the same numbers in the same matrices, after the converter)."""
    cfg = parity_config(name)
    jax_model = build_with_random_params(lambda: JaxGPT(cfg, nnx.Rngs(0)), seed=0)
    flat = flat_params(jax_model)
    state, layout = jax_to_torch(flat, cfg), param_layout(cfg)
    decisions = decide_all(TorchGPT(cfg), OPTIMIZERS["muon"])
    checked = 0
    for param, a in param_assignments(jax_model, OPTIMIZERS["muon"]).items():
        if a.view:
            torch_name = layout[param].torch_name
            torch_matrices = state[torch_name].numpy().reshape(decisions[torch_name].matrix_shape)
            np.testing.assert_array_equal(torch_matrices.swapaxes(-1, -2), a.view.to_matrix(flat[param]))
            checked += 1
    assert checked > 0
