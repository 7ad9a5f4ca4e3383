"""Learning-rate schedules: JAX (float32, jit) and the torch twin agree at every step."""

import itertools

import jax
import numpy as np
import pytest
import torch

from mylm_jax.config import OptimConfig
from mylm_jax.optim.schedules import lr_factor, lr_schedule
from mylm_torch import schedules as torch_schedules
from parity_tests.tolerances import SCHEDULE_ABS, compare

STEPS = 200
CASES = {
    "constant": dict(schedule="constant", warmup_steps=10),
    "constant_no_warmup": dict(schedule="constant", warmup_steps=0),
    "cosine": dict(schedule="cosine", warmup_steps=20, min_lr_ratio=0.1),
    "cosine_to_zero": dict(schedule="cosine", warmup_steps=0, min_lr_ratio=0.0),
    **{f"wsd_{shape}": dict(schedule="wsd", warmup_steps=15, decay_fraction=0.3, decay_shape=shape,
                            min_lr_ratio=0.05) for shape in ("linear", "cosine", "1-sqrt")},
    "wsd_all_decay": dict(schedule="wsd", warmup_steps=0, decay_fraction=1.0, decay_shape="linear"),
}


@pytest.mark.parametrize("case", CASES)
def test_factor_equal_at_every_step(case):
    optim = OptimConfig(**CASES[case])
    steps = np.arange(STEPS + 10)  # past the end too: the final lr holds
    jax_factors = np.asarray(jax.jit(lr_factor(optim, STEPS))(steps))
    torch_factors = np.array([torch_schedules.lr_factor(optim, STEPS, int(s)) for s in steps])
    compare(f"schedule {case}", jax_factors, torch_factors, abs_tol=SCHEDULE_ABS)


@pytest.mark.parametrize("case", ["cosine", "wsd_1-sqrt"])
def test_torch_lambda_lr_follows_the_jax_schedule(case):
    optim = OptimConfig(lr=3e-3, **CASES[case])
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=optim.lr)
    sched = torch_schedules.scheduler(opt, optim, STEPS)
    torch_lrs = []
    for _ in range(STEPS):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    jax_lrs = np.asarray(lr_schedule(optim, STEPS)(np.arange(STEPS)))
    compare(f"lr {case}", jax_lrs, np.array(torch_lrs), abs_tol=SCHEDULE_ABS * optim.lr)


def test_cases_cover_every_schedule_and_shape():
    seen = {(c["schedule"], c.get("decay_shape")) for c in CASES.values()}
    wanted = {("constant", None), ("cosine", None)} | set(itertools.product(["wsd"], ["linear", "cosine", "1-sqrt"]))
    assert wanted <= seen
