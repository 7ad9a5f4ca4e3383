"""Which attention implementation runs where, and with which mask (mylm_jax/model/attention.py).

The platform query (`attention.platform`) is replaced so that the GPU and TPU choices are
checked on CPU; cuDNN itself cannot run here, so `jax.nn.dot_product_attention` is
replaced by a recorder that checks the arguments the cuDNN path passes and computes the
result with XLA from exactly those arguments (its mask AND, when is_causal, the causal
triangle), so the result shows whether the masks mean what the reference means.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mylm_jax.config import ModelConfig
from mylm_jax.model import attention
from mylm_jax.model.attention import (Attention, attention_mask, choose_attention, fast_attention,
                                      reference_attention)

TINY = dict(vocab_size=64, max_seq_len=16, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2)


def cfg(**kw) -> ModelConfig:
    return ModelConfig(**{**TINY, **kw})


@pytest.mark.parametrize("on, asked, dtype, expected, falls_back", [
    ("cpu", "auto", "float32", "blockwise", False),
    ("cpu", "auto", "bfloat16", "blockwise", False),
    ("gpu", "auto", "bfloat16", "cudnn", False),
    ("gpu", "auto", "float32", "dot_product", True),  # cuDNN flash attention has no float32
    ("tpu", "auto", "bfloat16", "dot_product", False),
    ("gpu", "cudnn", "bfloat16", "cudnn", False),
    ("cpu", "cudnn", "bfloat16", "dot_product", True),
    ("tpu", "cudnn", "bfloat16", "dot_product", True),
    ("gpu", "blockwise", "bfloat16", "blockwise", False),  # an explicit choice is kept
    ("gpu", "reference", "float32", "reference", False),
])
def test_choice_by_platform(on, asked, dtype, expected, falls_back):
    impl, why = choose_attention(cfg(attention_impl=asked, dtype=dtype), on)
    assert impl == expected
    assert bool(why) == falls_back
    if falls_back:
        assert "dot_product" in why and (asked in why)


def test_cudnn_needs_a_head_dim_it_supports():
    # d_model 36 / 4 heads: head_dim 9, not a multiple of 8
    impl, why = choose_attention(cfg(d_model=36, n_heads=4, n_kv_heads=None, dtype="bfloat16"), "gpu")
    assert impl == "dot_product" and "head_dim=9" in why


class Recorder:
    """Stands in for jax.nn.dot_product_attention: records the call, computes with XLA."""

    def __init__(self):
        self.calls = []
        self.real = jax.nn.dot_product_attention

    def __call__(self, q, k, v, bias=None, mask=None, *, is_causal=False, implementation=None, **kw):
        self.calls.append(dict(mask=mask, is_causal=is_causal, implementation=implementation, dtype=q.dtype))
        return self.real(q, k, v, bias, mask, is_causal=is_causal, **kw)  # XLA, the same arguments


def packed_segments(B: int, T: int) -> jax.Array:
    """Row 0: documents of 5, 7 and 4 tokens; row 1: one document and 3 padding tokens (0)."""
    rows = [[1] * 5 + [2] * 7 + [3] * 4, [1] * (T - 3) + [0] * 3]
    return jnp.asarray(np.array(rows[:B])[:, :T], jnp.int32)


def qkv(B=2, T=16, H=4, K=2, d=8):
    keys = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(keys[0], (B, T, H, d)), jax.random.normal(keys[1], (B, T, K, d)),
            jax.random.normal(keys[2], (B, T, K, d)))


def test_cudnn_path_masks_equal_the_reference(monkeypatch):
    """The cuDNN call's (is_causal, same-document mask) is the reference's causal AND
    same-document mask: the outputs agree to float32 rounding."""
    rec = Recorder()
    monkeypatch.setattr(jax.nn, "dot_product_attention", rec)
    q, k, v = qkv()
    seg = packed_segments(2, 16)
    out = fast_attention(q, k, v, seg, jnp.float32, "cudnn")
    (call,) = rec.calls
    assert call["implementation"] == "cudnn" and call["is_causal"] is True
    assert call["mask"].shape == (2, 1, 16, 16) and call["mask"].dtype == bool
    combined = call["mask"][:, 0] & jnp.tril(jnp.ones((16, 16), bool))
    np.testing.assert_array_equal(combined, attention_mask(seg, 2, 16))
    ref = reference_attention(q, k, v, attention_mask(seg, 2, 16), jnp.float32)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_cudnn_path_without_segments_is_causal_only(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(jax.nn, "dot_product_attention", rec)
    q, k, v = qkv()
    out = fast_attention(q, k, v, None, jnp.float32, "cudnn")
    assert rec.calls[0]["mask"] is None and rec.calls[0]["is_causal"] is True
    ref = reference_attention(q, k, v, attention_mask(None, 2, 16), jnp.float32)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("on, dtype, implementation", [
    ("gpu", "bfloat16", "cudnn"), ("gpu", "float32", None), ("tpu", "bfloat16", None)])
def test_attention_layer_calls_what_the_platform_gets(monkeypatch, caplog, on, dtype, implementation):
    """Attention.__call__ on a (mocked) GPU / TPU: the library call, its implementation and
    its mask; a float32 GPU config falls back to XLA and says so once."""
    rec = Recorder()
    monkeypatch.setattr(jax.nn, "dot_product_attention", rec)
    monkeypatch.setattr(attention, "platform", lambda: on)
    monkeypatch.setattr(attention, "_logged", set())
    c = cfg(dtype=dtype, position="rope")
    layer = Attention(c, nnx.Rngs(0))
    B, T = 2, 16
    x_ND = jax.random.normal(jax.random.key(1), (B * T, c.d_model))
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    seg = packed_segments(B, T)
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        y = layer(x_ND, B, T, positions, seg)
        layer(x_ND, B, T, positions, seg)
    assert [c_["implementation"] for c_ in rec.calls] == [implementation] * 2
    assert rec.calls[0]["dtype"] == jnp.dtype(dtype)
    mask = rec.calls[0]["mask"][:, 0]
    if rec.calls[0]["is_causal"]:
        mask = mask & jnp.tril(jnp.ones((T, T), bool))
    np.testing.assert_array_equal(mask, attention_mask(seg, B, T))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == (1 if (on, dtype) == ("gpu", "float32") else 0)  # logged once, not per call
    # The same layer with the reference implementation gives the same output.
    monkeypatch.setattr(layer, "cfg", cfg(dtype=dtype, position="rope", attention_impl="reference"))
    tol = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(y, layer(x_ND, B, T, positions, seg), atol=tol, rtol=tol)


def test_cpu_auto_is_blockwise_and_never_calls_the_library(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(jax.nn, "dot_product_attention", rec)
    monkeypatch.setattr(attention, "platform", lambda: "cpu")
    c = cfg()
    layer = Attention(c, nnx.Rngs(0))
    x_ND = jax.random.normal(jax.random.key(1), (2 * 16, c.d_model))
    layer(x_ND, 2, 16, jnp.broadcast_to(jnp.arange(16), (2, 16)), packed_segments(2, 16))
    assert rec.calls == []


@pytest.mark.accelerator
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU with cuDNN (scripts/accelerator_check.sh)")
def test_cudnn_runs_on_the_gpu_and_matches_the_reference():
    """The real cuDNN kernel with packed documents: output and gradients against the reference
    (bfloat16 inputs: a few bfloat16 ulps)."""
    q, k, v = (t.astype(jnp.bfloat16) for t in qkv(H=4, K=2, d=64))
    seg = packed_segments(2, 16)
    mask = attention_mask(seg, 2, 16)

    def loss(impl):
        def f(q, k, v):
            out = fast_attention(q, k, v, seg, jnp.bfloat16, "cudnn") if impl == "cudnn" \
                else reference_attention(q, k, v, mask, jnp.bfloat16)
            return jnp.sum(jnp.sin(out)), out
        return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)

    (_, out), grads = loss("cudnn")
    (_, ref), ref_grads = loss("reference")
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=3e-2, rtol=3e-2)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), atol=5e-2, rtol=5e-2)
    hlo = jax.jit(lambda q, k, v: fast_attention(q, k, v, seg, jnp.bfloat16, "cudnn")).lower(q, k, v).as_text()
    assert "cudnn" in hlo.lower()  # the custom call, not a silent XLA fallback
