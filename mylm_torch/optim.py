"""The twin's optimizer: the same groups, clipping, schedules and momentum warmup as
mylm_jax/optim/build.py, with torch.optim.AdamW and the twin's Muon.

The twin decides its groups on its own: mylm_torch/grouping.py looks at the torch model
(names, shapes, config) and says, for every parameter, AdamW or Muon, decay or not, and
Muon's matrix view and lr ratio. parity_tests/test_grouping.py checks that these decisions
agree with the JAX side's (mylm_jax/optim/grouping.py) for every variant.
"""

from __future__ import annotations

import torch

from mylm_jax.config import OptimConfig
from mylm_torch.grouping import decide_all
from mylm_torch.muon import Muon
from mylm_torch.schedules import scheduler


class TwinOptimizer:
    """clip_grad_norm_ -> AdamW and Muon steps -> schedulers; `step()` once per training step."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, total_steps: int):
        if optim.moment_dtype != "float32":  # torch's AdamW keeps its moments in the parameters' dtype
            raise ValueError("the twin keeps float32 optimizer moments: optim.moment_dtype=bfloat16 is JAX-only "
                             "(docs/precision.md)")
        named = dict(model.named_parameters())
        self.optim, self.params, self.step_count = optim, list(named.values()), 0
        groups = {(o, d): [] for o in ("adamw", "muon") for d in (True, False)}
        matrix_shapes = {}  # Muon: torch [*batch, fan_out, fan_in]
        for name, decision in decide_all(model, optim).items():
            p = named[name]
            groups[decision.optimizer, decision.weight_decay].append(p)
            if decision.matrix_shape:
                matrix_shapes[p] = decision.matrix_shape

        def param_groups(opt: str, weight_decay: float):
            return [{"params": groups[opt, d], "weight_decay": weight_decay if d else 0.0}
                    for d in (True, False) if groups[opt, d]]

        self.optimizers = [torch.optim.AdamW(param_groups("adamw", optim.weight_decay),
                                             lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                                             foreach=False)]
        self.muon = None
        if groups["muon", True] or groups["muon", False]:
            self.muon = Muon(param_groups("muon", optim.muon_weight_decay), lr=optim.muon_lr,
                             momentum=optim.muon_momentum, nesterov=optim.muon_nesterov,
                             ns_steps=optim.muon_ns_steps, ns_dtype=getattr(torch, optim.muon_ns_dtype),
                             adjust_lr=optim.muon_adjust_lr, matrix_shapes=matrix_shapes)
            self.optimizers.append(self.muon)
        self.schedulers = [scheduler(o, optim, total_steps) for o in self.optimizers]

    def momentum(self, step: int) -> float:
        W, o = self.optim.muon_momentum_warmup_steps, self.optim
        if W == 0:
            return o.muon_momentum
        frac = min(step / W, 1.0)
        return (1 - frac) * o.muon_momentum_start + frac * o.muon_momentum

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.optim.grad_clip, foreach=False)
        if self.muon is not None:
            for group in self.muon.param_groups:
                group["momentum"] = self.momentum(self.step_count)
        for o, s in zip(self.optimizers, self.schedulers):
            o.step()
            s.step()
        self.step_count += 1
