"""Every parity tolerance in one place, and the one comparison helper every test uses.

All comparisons are float32 JAX (the reference, `b`) against float32 PyTorch (`a`) with
identical weights, at the small sizes of these tests (D=64, T=16, vocab 128).

Definitions (per tensor, i.e. per layer output or per parameter's gradient):
    max abs err = max |a - b|
    max rel err = max |a - b| / max(max |b|, TINY)
The relative error is scaled by the tensor's largest magnitude, not element by element,
so entries near zero (where float32 rounding noise is large relative to the entry) do
not dominate it.
    KL per token = mean over tokens of KL(softmax(b) || softmax(a)), in float64 (logits only).

A loosened tolerance needs a written reason beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

TINY = 1e-30  # floor of the denominator of the relative error (a tensor that is all zeros)

# Layers (test_layers.py)
NORM_ABS = 1e-6  # LayerNorm / RMSNorm outputs, O(1) values: a few float32 ulps
ROPE_ABS = 1e-5  # RoPE of O(1) inputs at positions < 256: the angle pos*freq is the same float32
#                  product in both, but cos/sin/pow are different libm implementations (~ulps of
#                  angles up to 256 rad)
LAYER_ABS = 1e-5  # attention, MLP and MoE outputs, O(1) values after a few matmuls of width <= 256
AUX_REL = 1e-5  # MoE load_balance_loss, router_z_loss, expert_load (relative, see above)

# Whole model (test_model.py)
LOGITS_ABS = 1e-5  # logits max abs error (logits are O(1..10) here)
KL_MAX = 1e-9  # mean KL per token; float32 noise of 1e-6 in logits gives KL ~ 1e-12
LOSS_ABS = 1e-5  # cross-entropy (+ MoE aux terms), a scalar of size ~5
GRAD_REL = 1e-4  # gradient of every parameter, relative to that gradient's max |value|
ZERO_GRAD_ABS = 1e-6  # a gradient that is exactly 0 in exact arithmetic is pure rounding noise,
#                       so a relative error means nothing: both sides must be below this instead.
#                       Case: the key-side bias (k_norm.bias) without RoPE; adding b to every key
#                       adds q.b to every score of a row, which softmax ignores. Measured ~3e-8.
SCHEDULE_ABS = 2e-7  # lr multiplier in [0, 1]. Loosened from 1e-7 on purpose: JAX computes it inside
#                      jit in float32, torch in Python float64; a float32 value near 1 is itself
#                      rounded by up to 6e-8 and float32 cos adds about one more ulp (every
#                      formulation tried measured 1.0-2.0e-7 against float64). Measured 1.3e-7.

# Optimizers: parameters after 20 optimizer steps, lr 0.02 (a total change of ~0.4).
MUON_ABS = 1e-6  # JAX Muon vs the twin's Muon, float32 Newton-Schulz
ADAMW_REL = 1e-6  # JAX AdamW vs torch.optim.AdamW, relative to the largest |weight| (~4 here): torch
#                   rounds a weight twice per step (decay, then update), JAX once (p + delta), so
#                   they drift apart by about an ulp of |p| per step. Measured 5.0e-7.
TRAIN_LOSS_ABS = 1e-4  # per-step loss of a 50-step training run (test_training.py): float32
#                        rounding differences feed back through every update
MUON_BF16_ABS = 2e-3  # JAX bfloat16 Newton-Schulz vs torch.optim.Muon (always bfloat16). Loose on
#                       purpose: the two round bfloat16 matmul results in different places (bf16 has
#                       8 mantissa bits, 4e-3 relative); measured 8e-4. The twin in bf16 equals
#                       torch.optim.Muon bit for bit, so the exact check is made there.

# Layouts (tests/test_scan_layers.py): JAX against JAX, the scanned layer stack (model.scan_layers)
# against the unrolled one with the same weights, both jitted. Not a twin comparison: the same ops,
# only XLA's loop vs straight-line code (fusion, summation order of the stacked gradients).
SCAN_ABS = 1e-6  # gradients (O(1)) and MoE aux terms: a few float32 ulps
SCAN_REL = 1e-6  # logits, relative to the largest |logit|: logits reach ~8 here, where one float32
#                  ulp is 9.5e-7, so an absolute 1e-6 would demand bit equality; measured 1-ulp
#                  differences (1.2e-6 abs, 1.4e-7 rel) where XLA fuses the loop body differently


@dataclass
class Report:
    name: str
    max_abs: float
    max_rel: float
    kl: float | None = None

    def __str__(self) -> str:
        kl = "" if self.kl is None else f", mean KL/token {self.kl:.3e}"
        return f"{self.name}: max abs err {self.max_abs:.3e}, max rel err {self.max_rel:.3e}{kl}"


def _kl_per_token(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Mean over tokens of KL(p_b || p_a), p = softmax over the last axis, in float64."""
    def log_softmax(z):
        z = z.astype(np.float64).reshape(-1, z.shape[-1])
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    log_pa, log_pb = log_softmax(logits_a), log_softmax(logits_b)
    return float(np.mean(np.sum(np.exp(log_pb) * (log_pb - log_pa), axis=-1)))


def compare(name: str, torch_value, jax_value, *, abs_tol: float | None = None,
            rel_tol: float | None = None, logits: bool = False, kl_tol: float = KL_MAX) -> Report:
    """Compare a torch result with the JAX reference; fail with all the numbers if off.

    Accepts numpy arrays, torch tensors or jax arrays (anything np.asarray takes after
    `.detach()` for torch). Returns the report, so tests can collect measured errors.
    """
    a = _to_numpy(torch_value)
    b = _to_numpy(jax_value)
    assert a.shape == b.shape, f"{name}: shape {a.shape} (torch) vs {b.shape} (jax)"
    assert np.isfinite(a).all() and np.isfinite(b).all(), f"{name}: non-finite values"
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / max(float(np.abs(b).max()) if b.size else 0.0, TINY)
    report = Report(name, max_abs, max_rel, _kl_per_token(a, b) if logits else None)
    problems = []
    if abs_tol is not None and max_abs > abs_tol:
        problems.append(f"max abs err > {abs_tol:g}")
    if rel_tol is not None and max_rel > rel_tol:
        problems.append(f"max rel err > {rel_tol:g}")
    if logits and report.kl > kl_tol:
        problems.append(f"KL/token > {kl_tol:g}")
    if os.environ.get("PARITY_REPORT"):  # PARITY_REPORT=1 pytest parity_tests -s: print every figure
        print(report)
    assert not problems, f"{report} ({'; '.join(problems)})"
    return report


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch
        x = x.detach().cpu()
    return np.asarray(x)
