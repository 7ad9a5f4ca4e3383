"""The objective's numbers (mylm_jax/train/loss.py), each against a value worked out by hand.

The logits are logs of small integers, so every token's loss is the log of a fraction:
-log softmax(z)[y] = log(sum_j e^z_j) - z_y = log(sum_j c_j / c_y) for z = log(c).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mylm_jax.config import LossConfig
from mylm_jax.train.loss import (
    cross_entropy,
    cross_entropy_sum,
    loss_weights,
    objective,
    weighted_terms,
)

# [B=2, T=2, V=4]. Token (1, 1) adds 7 to every logit: softmax does not move.
COUNTS = np.array([[[1, 1, 1, 1], [1, 2, 3, 4]],
                   [[1, 1, 1, 5], [2, 2, 2, 2]]], np.float64)
LOGITS = np.log(COUNTS) + np.array([[0, 0], [0, 7]])[..., None]
TARGETS = np.array([[2, 3], [0, 1]], np.int32)
TOKEN_LOSS = np.log(np.array([[4 / 1, 10 / 4], [8 / 1, 8 / 2]]))  # log(sum c / c_target)
MASK = np.array([[1, 0], [1, 1]], np.float32)  # token (0, 1) is not trained


def _ce_sum(mask=None, logits=LOGITS):
    total, count = cross_entropy_sum(jnp.asarray(logits, jnp.float32), jnp.asarray(TARGETS),
                                     None if mask is None else jnp.asarray(mask))
    return total, count


def test_cross_entropy_sum_adds_the_masked_in_token_losses_and_counts_them():
    total, count = _ce_sum(MASK)
    np.testing.assert_allclose(float(total), math.log(4 * 8 * 4), rtol=1e-6)  # log 4 + log 8 + log 4
    assert float(count) == 3.0 and count.dtype == jnp.float32


def test_without_a_mask_every_token_counts():
    total, count = _ce_sum()
    np.testing.assert_allclose(float(total), TOKEN_LOSS.sum(), rtol=1e-6)
    assert float(count) == 4.0 and count.dtype == jnp.float32


def test_bfloat16_logits_are_scored_in_float32():
    # log(3) and 2 log(3) are not bfloat16 numbers: rounded, the loss moves by ~1e-3, and a
    # logsumexp taken in bfloat16 would round again (to 8 bits) on top.
    logits = jnp.asarray(np.log([[[1.0, 3.0, 9.0]]]), jnp.bfloat16)
    z = np.asarray(logits.astype(jnp.float32), np.float64)[0, 0]
    total, _ = cross_entropy_sum(logits, jnp.asarray([[1]]))
    assert total.dtype == jnp.float32
    np.testing.assert_allclose(float(total), np.log(np.exp(z).sum()) - z[1], rtol=1e-6)


def test_cross_entropy_is_the_mean_over_trained_tokens_and_zero_for_none():
    np.testing.assert_allclose(float(cross_entropy(jnp.asarray(LOGITS, jnp.float32), jnp.asarray(TARGETS),
                                                   jnp.asarray(MASK))), math.log(128) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(cross_entropy(jnp.asarray(LOGITS, jnp.float32), jnp.asarray(TARGETS))),
                               TOKEN_LOSS.mean(), rtol=1e-6)
    one = np.array([[0, 0], [1, 0]], np.float32)
    np.testing.assert_allclose(float(cross_entropy(jnp.asarray(LOGITS, jnp.float32), jnp.asarray(TARGETS),
                                                   jnp.asarray(one))), math.log(8), rtol=1e-6)
    # No trained token: the sum (0) over max(count, 1), not 0 / 0.
    assert float(cross_entropy(jnp.asarray(LOGITS, jnp.float32), jnp.asarray(TARGETS),
                               jnp.zeros((2, 2)))) == 0.0


def test_loss_weights_are_the_loss_sections_fields():
    assert loss_weights(LossConfig(load_balance=0.25, router_z=0.5)) == {"load_balance": 0.25, "router_z": 0.5}


def test_weighted_terms_is_the_weighted_sum_and_refuses_a_term_without_a_weight():
    weights = {"load_balance": 0.25, "router_z": 0.5, "unused": 100.0}
    value = weighted_terms({"load_balance": jnp.float32(2.0), "router_z": jnp.float32(3.0)}, weights)
    assert float(value) == 0.25 * 2 + 0.5 * 3
    empty = weighted_terms({}, weights)
    assert float(empty) == 0.0 and empty.shape == () and empty.dtype == jnp.float32
    with pytest.raises(KeyError, match=r"reports loss term\(s\) \['z_new'\] .* LossConfig: "
                                       r"\['load_balance', 'router_z', 'unused'\]"):
        weighted_terms({"load_balance": jnp.float32(1.0), "z_new": jnp.float32(1.0)}, weights)


def test_objective_is_the_token_sum_over_n_plus_the_weighted_terms_over_m():
    aux = {"losses": {"load_balance": jnp.float32(2.0), "router_z": jnp.float32(3.0)}}
    batch = {"targets": jnp.asarray(TARGETS), "loss_mask": jnp.asarray(MASK)}
    weights = {"load_balance": 0.25, "router_z": 0.5}
    # This microbatch is one of M = 4, N = 12 trained tokens in the whole batch.
    value, loss_sum = objective((jnp.asarray(LOGITS, jnp.float32), aux), batch, weights, jnp.float32(12.0), 4)
    np.testing.assert_allclose(float(loss_sum), math.log(128), rtol=1e-6)
    np.testing.assert_allclose(float(value), math.log(128) / 12 + (0.25 * 2 + 0.5 * 3) / 4, rtol=1e-6)
    # One microbatch by default; a batch without a mask trains every token; no terms, no extra.
    value, loss_sum = objective((jnp.asarray(LOGITS, jnp.float32), aux), {"targets": jnp.asarray(TARGETS)},
                                weights, jnp.float32(4.0))
    np.testing.assert_allclose(float(loss_sum), TOKEN_LOSS.sum(), rtol=1e-6)
    np.testing.assert_allclose(float(value), TOKEN_LOSS.sum() / 4 + (0.25 * 2 + 0.5 * 3), rtol=1e-6)
    value, _ = objective((jnp.asarray(LOGITS, jnp.float32), {}), batch, weights, jnp.float32(3.0))
    np.testing.assert_allclose(float(value), math.log(128) / 3, rtol=1e-6)
