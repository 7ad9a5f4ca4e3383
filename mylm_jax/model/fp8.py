"""FP8 matmuls with per-tensor current scaling (`model.fp8: true`).

    forward   y = x @ W          x, W  -> float8_e4m3fn  (3 mantissa bits, max 448)
    backward  dx = g @ W^T       g     -> float8_e5m2    (2 mantissa bits, max 57344)
              dW = x^T @ g       reusing the forward's e4m3 copies of x and W

Every matmul input is quantised on its own with one scale per tensor, computed from
that tensor's own absolute maximum just before the cast ("current" or "just-in-time"
scaling, as torchao's float8 default):

    s = 2^k,  k the largest integer with amax(|t|) * 2^k <= fmax          (exact: frexp)
    q = cast_fp8(t * s)                             (t * s exact; no value can overflow)
    x @ W = (q_x @ q_W) / (s_x s_W)                 (products exact, float32 accumulation)

Why current scaling, not delayed scaling (scales from an amax history of past steps):
it holds no state, so there is nothing to checkpoint and a resumed run is bit-exact for
free; it cannot overflow when a tensor's range jumps (delayed scaling saturates until its
history catches up, a known source of loss spikes); and the extra pass over each input to
find its amax is cheap next to the matmul on the sizes where FP8 pays at all (d >= 1024).
Why power-of-two scales: multiplying by 2^k and dividing it back are exact in floating
point, so the only error is the FP8 rounding itself, which is what the bounds in
tests/test_fp8.py and docs/precision.md are derived from; the cost is at most one bit
of range headroom (amax lands in (fmax/2, fmax]).

Only the matmuls that go through `Dense` (attention's q, kv, gate and output projections,
the MLP) use this; the embedding lookup, the logits head, the MoE router and experts stay
in the compute dtype (docs/precision.md says why). On CPU the FP8 values are converted to
float32 before the dot (exact: every FP8 value is a float32), so it runs, slowly; on a
GPU with FP8 tensor cores (H100 and later) XLA runs the dot on FP8 operands directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

E4M3 = jnp.float8_e4m3fn  # forward: activations and weights (more mantissa)
E5M2 = jnp.float8_e5m2  # backward: gradients (more range)


def power_of_two_scale(amax: jax.Array, dtype) -> jax.Array:
    """The largest 2^k with amax * 2^k <= the format's max (float32 scalar; 1 for amax 0).

    With fmax = f * 2^E and amax = m * 2^e (frexp: f, m in [0.5, 1)), amax * 2^k <= fmax
    iff e + k < E, or e + k == E and m <= f. Integer arithmetic: no log2 rounding.
    """
    f, E = np.frexp(float(jnp.finfo(dtype).max))
    m, e = jnp.frexp(amax.astype(jnp.float32))
    k = E - e - (m > f).astype(e.dtype)
    k = jnp.where(amax > 0, k, 0)  # an all-zero tensor: any scale is exact
    return jnp.ldexp(jnp.ones([], jnp.float32), k)


def quantize(t: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """(t * s cast to `dtype`, 1 / s) with the per-tensor power-of-two scale s.

    A non-finite amax gives s = 0 and NaNs: an overflowing step is then seen (and skipped
    or halted on) by the trainer, as in float32. The clip only guards the cast (the scale
    already keeps every finite value inside the range)."""
    t = t.astype(jnp.float32)
    amax = jax.lax.stop_gradient(jnp.max(jnp.abs(t)))
    s = jnp.where(jnp.isfinite(amax), power_of_two_scale(amax, dtype), jnp.nan)
    fmax = float(jnp.finfo(dtype).max)
    return jnp.clip(t * s, -fmax, fmax).astype(dtype), 1.0 / s


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


@jax.custom_vjp
def fp8_matmul(x_NK: jax.Array, w_KM: jax.Array) -> jax.Array:
    """x @ w for 2-D x [N, K] and w [K, M] with e4m3 inputs; float32 result."""
    return _forward(x_NK, w_KM)[0]


def _forward(x_NK, w_KM):
    qx, inv_sx = quantize(x_NK, E4M3)
    qw, inv_sw = quantize(w_KM, E4M3)
    y_NM = _dot(qx, qw) * (inv_sx * inv_sw)
    # The residuals are the FP8 copies (a quarter of float32's activation memory), and the
    # inputs' dtypes as zero-size arrays (residuals must be arrays) for the gradients' dtypes.
    return y_NM, (qx, inv_sx, qw, inv_sw, jnp.zeros(0, x_NK.dtype), jnp.zeros(0, w_KM.dtype))


def _backward(residuals, g_NM):
    qx, inv_sx, qw, inv_sw, x_tag, w_tag = residuals
    qg, inv_sg = quantize(g_NM, E5M2)
    dx_NK = _dot(qg, qw.T) * (inv_sg * inv_sw)
    dw_KM = _dot(qx.T, qg) * (inv_sx * inv_sg)
    return dx_NK.astype(x_tag.dtype), dw_KM.astype(w_tag.dtype)


fp8_matmul.defvjp(_forward, _backward)
