"""Newton-Schulz and Muon properties, and how optax.contrib.muon differs from the project's Muon."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mylm_jax.optim.grouping import lr_ratio
from mylm_jax.optim.muon import muon, newton_schulz


def _gaussian(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _with_spectrum(rows, cols, singular_values, seed=0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((rows, len(singular_values))))
    V, _ = np.linalg.qr(rng.standard_normal((cols, len(singular_values))))
    return jnp.asarray(U @ np.diag(singular_values) @ V.T, jnp.float32)


@pytest.mark.parametrize("G", [
    _gaussian((128, 32)), _gaussian((32, 128)), _gaussian((256, 100)),  # rectangular: well conditioned
    _with_spectrum(64, 64, np.logspace(-2, 0, 64)),  # square, condition number 100
    _with_spectrum(96, 48, np.logspace(-1, 1, 48), seed=1),
], ids=["tall", "wide", "rect", "square_cond100", "tall_cond100"])
def test_newton_schulz_output_is_near_orthogonal(G):
    """5 quintic steps lift every singular value of the normalised input to [0.6, 1.2] as long
    as none is below ~1/485 of the Frobenius norm (each step multiplies small ones by ~3.44).
    A square Gaussian matrix has singular values near 0 that stay small: Muon accepts that.
    The upper end is the quintic's own peak: max of 3.4445x - 4.775x^3 + 2.0315x^5 on [0, 1]
    is 1.2024 (at x = 0.555), so values that land near 0.555 come out at up to 1.2024."""
    singular = np.linalg.svd(np.asarray(newton_schulz(G)), compute_uv=False)
    assert singular.min() >= 0.6 and singular.max() <= 1.2024 + 1e-4, (singular.min(), singular.max())


@pytest.mark.parametrize("scale", [1e-4, 1e-2, 1e2, 1e4])
def test_newton_schulz_is_invariant_to_input_scale(scale):
    G = _gaussian((48, 80), seed=1)
    np.testing.assert_allclose(newton_schulz(scale * G), newton_schulz(G), atol=2e-6)


def test_newton_schulz_treats_leading_axes_as_a_batch_of_matrices():
    G = _gaussian((3, 40, 24), seed=2)
    batched = newton_schulz(G)
    for e in range(3):
        np.testing.assert_allclose(batched[e], newton_schulz(G[e]), atol=1e-6)


def test_bfloat16_iteration_stays_close_to_float32():
    G = _gaussian((64, 96), seed=3)
    out = newton_schulz(G, dtype=jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    # bfloat16 keeps 8 mantissa bits: entries of size ~0.1 move by ~1e-3 per rounding, over 5 steps.
    np.testing.assert_allclose(np.asarray(out, np.float32), newton_schulz(G), atol=2e-2)


def test_lr_ratio():
    assert lr_ratio((256, 1024), "original") == 2.0  # sqrt(fan_out / fan_in)
    assert lr_ratio((1024, 256), "original") == 1.0
    assert lr_ratio((256, 1024), "match_rms_adamw") == pytest.approx(0.2 * math.sqrt(1024))


def test_zero_gradient_leaves_only_decoupled_weight_decay():
    p = _gaussian((16, 8), seed=4)
    tx = muon(0.1, weight_decay=0.5)
    updates, _ = tx.update(jnp.zeros_like(p), tx.init(p), p)
    np.testing.assert_allclose(p + updates, p * (1 - 0.1 * 0.5), rtol=1e-6)


def test_how_optax_contrib_muon_differs():
    """optax.contrib.muon bias-corrects its momentum (as Adam does); the project's Muon,
    like torch.optim.Muon and Keller Jordan's, does not. Step 1 agrees (both updates are
    parallel to g1, and Newton-Schulz ignores scale); from step 2 the mix of the current
    gradient and the momentum differs, and so does the orthogonalised direction."""
    beta = 0.95
    g1, g2 = _gaussian((32, 48), 5), _gaussian((32, 48), 6)
    tx = optax.contrib.scale_by_muon(beta=beta, nesterov=True)
    state = tx.init(g1)
    u1, state = tx.update(g1, state)
    u2, state = tx.update(g2, state)
    np.testing.assert_allclose(u1, newton_schulz(g1), atol=2e-6)

    buffer2 = beta * (1 - beta) * g1 + (1 - beta) * g2  # the EMA after two steps (same in both)
    ours = (1 - beta) * g2 + beta * buffer2  # Nesterov, no bias correction
    optax_mix = beta * buffer2 / (1 - beta ** 3) + (1 - beta) * g2 / (1 - beta ** 2)
    np.testing.assert_allclose(u2, newton_schulz(optax_mix), atol=2e-6)
    assert float(jnp.abs(u2 - newton_schulz(ours)).max()) > 1e-2
