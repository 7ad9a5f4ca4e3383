"""FP8 matmuls (mylm_jax/model/fp8.py): error bounds derived from the formats, training, resume.

The bound. A format with m mantissa bits and smallest normal exponent emin rounds a scaled
value z = t * s (s = 2^k, so the scaling itself is exact) to nearest:
    normal range  |z| >= 2^emin:  |round(z) - z| <= 2^-(m+1) |z|      (half an ulp)
    subnormals    |z| <  2^emin:  |round(z) - z| <= 2^(emin-m-1)       (half the spacing)
and s * amax <= fmax, so nothing saturates. Dividing by s again (exact), each element's
error is
    e(t) <= u |t| + a,    u = 2^-(m+1),  a = 2^(emin-m-1) / s
        e4m3 (m 3, emin -6):   u = 1/16, a = 2^-10 / s
        e5m2 (m 2, emin -14):  u = 1/8,  a = 2^-17 / s.
For y = sum_k x_k w_k computed from the quantised x^, w^ (products of two FP8 values are
exact in float32; the sum is accumulated in float32, relative error <= K 2^-24 per term):
    |y^ - y| <= sum_k [ e(x_k) |w_k| + (|x_k| + e(x_k)) e(w_k) ]
                + K 2^-24 sum_k (|x_k| + e(x_k)) (|w_k| + e(w_k))
The same bound with (g, e5m2) in place of x (or w) covers the gradients dx = g^ w^T and
dW = x^T g^, which reuse the forward's e4m3 copies of x and W. The test checks every
element against its own bound (computed in float64), and that the error is really FP8's
(far above float32 rounding), so the bound is neither vacuous nor missed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mylm_jax.config import ModelConfig
from mylm_jax.model.fp8 import E4M3, E5M2, fp8_matmul, power_of_two_scale, quantize
from mylm_jax.model.gpt import GPT
from mylm_jax.model.layers import Dense
from tests.train_helpers import losses, run_mylm, tiny_config

FORMATS = {E4M3: (3, -6), E5M2: (2, -14)}  # mantissa bits, smallest normal exponent


def element_error(t: np.ndarray, dtype) -> np.ndarray:
    """The per-element bound u |t| + a for quantising t with its per-tensor scale."""
    m, emin = FORMATS[dtype]
    s = float(power_of_two_scale(jnp.max(jnp.abs(jnp.asarray(t, jnp.float32))), dtype))
    return 2.0 ** -(m + 1) * np.abs(t) + 2.0 ** (emin - m - 1) / s


def matmul_bound(a, b, a_dtype, b_dtype, accumulation: float = 2.0 ** -24) -> np.ndarray:
    """Elementwise bound on |a^ @ b^ - a @ b| (a: [N, K], b: [K, M]), see the module docstring;
    `accumulation`: the unit roundoff of the sum (float32: 2^-24)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ea, eb = element_error(a, a_dtype), element_error(b, b_dtype)
    K = a.shape[1]
    return ea @ np.abs(b) + (np.abs(a) + ea) @ eb + K * accumulation * (np.abs(a) + ea) @ (np.abs(b) + eb)


def inputs(seed: int):
    """x with a heavy tail (outliers stretch the scale, pushing small values into subnormals),
    w at init scale, an upstream gradient g."""
    kx, kw, kg, ko = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(kx, (64, 96))
    x = x.at[jax.random.randint(ko, (4,), 0, 64), :3].multiply(300.0)  # a few 300-sigma outliers
    w = 0.02 * jax.random.normal(kw, (96, 48))
    g = 1e-3 * jax.random.normal(kg, (64, 48))
    return x, w, g


def check_within(got, ref, bound):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    err = np.abs(got - ref)
    assert np.all(err <= bound), f"max error / bound {np.max(err / bound):.3f}"
    # It is FP8's error, not float32's: far above float32 rounding of the result.
    assert np.linalg.norm(err) > 1e-4 * np.linalg.norm(ref)
    return float(np.max(err / bound))


def test_scale_is_the_largest_power_of_two_that_fits():
    for dtype in (E4M3, E5M2):
        fmax = float(jnp.finfo(dtype).max)
        for amax in (1e-30, 3e-3, 0.875, 1.0, 447.9, 448.0, 449.0, 6e4, 3e38):
            s = float(power_of_two_scale(jnp.float32(amax), dtype))
            assert np.log2(s) == round(np.log2(s))  # a power of two
            assert fmax / 2 < np.float32(amax) * s <= fmax
    assert float(power_of_two_scale(jnp.float32(0.0), E4M3)) == 1.0


def test_quantize_edge_cases():
    q, inv = quantize(jnp.zeros((3, 3)), E4M3)
    assert np.all(np.asarray(q.astype(jnp.float32)) == 0) and np.isfinite(float(inv))
    q, inv = quantize(jnp.array([1.0, jnp.inf]), E4M3)  # overflow upstream: NaN, seen by the trainer
    assert not np.isfinite(np.asarray(q.astype(jnp.float32)) * float(inv)).all()
    t = jnp.array([448.0 / 256, -1.0, 2.0 ** -12])  # exact in e4m3 once scaled by 256
    q, inv = quantize(t, E4M3)
    np.testing.assert_array_equal(np.asarray(q.astype(jnp.float32)) * float(inv), np.asarray(t))


@pytest.mark.parametrize("seed", [0, 1])
def test_forward_and_gradients_within_the_derived_bounds(seed):
    x, w, g = inputs(seed)
    y, vjp = jax.vjp(fp8_matmul, x, w)
    dx, dw = vjp(g)
    x64, w64, g64 = (np.asarray(t, np.float64) for t in (x, w, g))
    ratios = [
        check_within(y, x64 @ w64, matmul_bound(x, w, E4M3, E4M3)),
        check_within(dx, g64 @ w64.T, matmul_bound(g, w.T, E5M2, E4M3)),
        check_within(dw, x64.T @ g64, matmul_bound(x.T, g, E4M3, E5M2)),
    ]
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32
    assert max(ratios) > 0.05  # the bounds are not loose by orders of magnitude


@pytest.mark.accelerator
@pytest.mark.skipif(jax.default_backend() == "cpu", reason="needs a GPU / TPU (scripts/accelerator_check.sh)")
def test_fp8_matmul_on_the_accelerator_within_the_bounds():
    """The same bounds where XLA runs the dot on FP8 operands (H100: cuBLASLt FP8 GEMM). Hopper's
    FP8 tensor cores accumulate with about 14 significant bits, not float32's 24 (DeepSeek-V3
    report, section 3.3.2), so the accumulation term uses 2^-13 here."""
    x, w, g = inputs(0)
    y, vjp = jax.jit(lambda x, w: jax.vjp(fp8_matmul, x, w))(x, w)
    dx, dw = vjp(g)
    x64, w64, g64 = (np.asarray(t, np.float64) for t in (x, w, g))
    acc = 2.0 ** -13
    check_within(y, x64 @ w64, matmul_bound(x, w, E4M3, E4M3, acc))
    check_within(dx, g64 @ w64.T, matmul_bound(g, w.T, E5M2, E4M3, acc))
    check_within(dw, x64.T @ g64, matmul_bound(x.T, g, E4M3, E5M2, acc))


def test_dense_uses_fp8_only_when_asked():
    cfg = ModelConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layers=1, n_heads=4)
    x = jax.random.normal(jax.random.key(0), (8, 32))
    plain = Dense(cfg, (32,), (4, 8), ("embed",), ("heads", "head_dim"), "hidden", nnx.Rngs(0))
    fp8 = Dense(ModelConfig(**{**cfg.__dict__, "fp8": True}), (32,), (4, 8), ("embed",), ("heads", "head_dim"),
                "hidden", nnx.Rngs(0))
    kernel = plain.kernel[...].reshape(32, 32)
    np.testing.assert_array_equal(fp8(x).reshape(8, 32), fp8_matmul(x, kernel) + fp8.bias[...].reshape(-1))
    assert np.abs(np.asarray(fp8(x) - plain(x))).max() > 0  # really quantised


def test_fp8_adds_no_state():
    """Current scaling keeps no amax history: an FP8 model has exactly the float model's
    variables, so checkpoints hold nothing more (resume is checked below)."""
    base = dict(vocab_size=64, max_seq_len=16, d_model=32, n_layers=2, n_heads=4, attn_gate="headwise")
    shapes = [jax.tree.map(lambda a: (a.shape, a.dtype),
                           nnx.state(nnx.eval_shape(lambda: GPT(ModelConfig(**base, fp8=f), nnx.Rngs(0)))))
              for f in (False, True)]
    assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
    assert jax.tree.leaves(shapes[0]) == jax.tree.leaves(shapes[1])


# --- training -----------------------------------------------------------------------------

V, T, B, STEPS, K = 64, 16, 8, 300, 100


def markov_tokens(steps: int, seed: int = 0) -> np.ndarray:
    """[steps, B, T + 1] token rows of a random Markov chain: each token is followed by one of 3
    fixed successors, so the best loss is about ln 3 = 1.10 nats (from ln 64 = 4.16)."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, V, (V, 3))
    rows = np.empty((steps, B, T + 1), np.int32)
    rows[..., 0] = rng.integers(0, V, (steps, B))
    for t in range(T):
        rows[..., t + 1] = successors[rows[..., t], rng.integers(0, 3, (steps, B))]
    return rows


def train_losses(**model) -> np.ndarray:
    """The per-step losses of STEPS AdamW steps of a tiny Llama-style model (K steps per call)."""
    from mylm_jax.config import config_from_dict
    from mylm_jax.parallel import make_mesh
    from mylm_jax.train.state import create_state
    from mylm_jax.train.step import make_train_steps

    cfg = config_from_dict({
        "model": dict(vocab_size=V, max_seq_len=T, d_model=32, n_layers=2, n_heads=4, position="rope",
                      norm="rmsnorm", mlp="swiglu", bias=False, **model),
        "data": dict(seq_len=T), "optim": dict(lr=3e-3, warmup_steps=20), "train": dict(steps=STEPS, batch_size=B)})
    ts = create_state(cfg, make_mesh(cfg.mesh))
    steps = make_train_steps(cfg, ts, K)
    state, out = ts.state, []
    rows = markov_tokens(STEPS)
    for c in range(STEPS // K):
        r = rows[c * K:(c + 1) * K]
        batch = dict(inputs=r[..., :-1], targets=r[..., 1:], loss_mask=np.ones((K, B, T), np.float32),
                     segment_ids=np.ones((K, B, T), np.int32),
                     positions=np.broadcast_to(np.arange(T, dtype=np.int32), (K, B, T)))
        state, metrics, _ = steps(state, batch, np.ones(K, bool), False)
        out.append(np.asarray(metrics["loss"]))
    return np.concatenate(out)


def test_fp8_trains_like_bfloat16():
    """300 steps: the FP8 model's mean loss over the last 50 steps is within 0.02 nats of the
    bfloat16 model's (same init, same data). Both fall from ln 64 = 4.16 to under 1.3, so 0.02
    is under 1% of the way travelled; runs of one config differing only in the data seed end
    about 0.03 apart, so the margin is tighter than run-to-run noise."""
    bf16 = train_losses(dtype="bfloat16")
    fp8 = train_losses(dtype="bfloat16", fp8=True)
    assert np.all(np.isfinite(fp8))
    end_bf16, end_fp8 = bf16[-50:].mean(), fp8[-50:].mean()
    assert end_bf16 < 1.3 and end_fp8 < 1.3, (end_bf16, end_fp8)
    assert abs(end_fp8 - end_bf16) <= 0.02, (end_bf16, end_fp8)
    assert not np.array_equal(bf16, fp8)  # FP8 really ran


def test_fp8_run_resumes_exactly_after_kill_9(data_path, tmp_path):
    """The project's resume test (tests/test_train_resume.py) with model.fp8 on: killed after
    step 6, resumed from step 4's checkpoint, every step's loss equals the straight run's."""
    straight = tmp_path / "straight"
    cfg = tiny_config(data_path, straight, model={"fp8": True})
    result = run_mylm(["pretrain"], cfg, tmp_path / "s.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = tmp_path / "resumed"
    cfg = tiny_config(data_path, resumed, model={"fp8": True})
    killed = run_mylm(["pretrain"], cfg, tmp_path / "r.yaml", env={"MYLM_TEST_KILL_AT_STEP": "6"})
    assert killed.returncode == -9 and max(losses(resumed)) == 6
    again = run_mylm(["pretrain", "--resume"], cfg, tmp_path / "r.yaml")
    assert again.returncode == 0, again.stderr[-3000:]
    assert losses(resumed) == losses(straight) and len(losses(straight)) == 8
