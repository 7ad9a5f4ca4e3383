"""mylm_jax/model/inspect.py: attention weights of one layer, checked against the model itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mylm_jax.model.gpt import GPT
from mylm_jax.model.inspect import attention_weights, queries_keys, residual_stream
from mylm_jax.model.params import build_with_random_params
from mylm_jax.variants import variant

T = 12


def build(name: str) -> GPT:
    cfg = variant(name)
    return build_with_random_params(lambda: GPT(cfg, nnx.Rngs(0)), seed=1)


def tokens(cfg) -> np.ndarray:
    return np.random.default_rng(0).integers(0, cfg.vocab_size, T)


@pytest.mark.parametrize("name", ["gpt2", "modern_qknorm_mha", "moe_swiglu_shared"])
def test_rows_are_causal_distributions(name):
    model = build(name)
    cfg = model.cfg
    for layer in range(cfg.n_layers):
        p = np.asarray(attention_weights(model, tokens(cfg), layer))
        assert p.shape == (cfg.n_heads, T, T) and p.dtype == np.float32
        np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
        assert (p >= 0).all()
        assert not np.triu(p, k=1).any()  # no query sees a later key
        np.testing.assert_allclose(p[:, 0, 0], 1.0)  # the first token sees only itself


@pytest.mark.parametrize("name", ["gpt2", "modern_qknorm_mha", "modern_mqa_layernorm_untied",
                                  "gated_headwise", "gated_elementwise", "moe_swiglu_shared"])
def test_weights_times_values_give_the_models_attention_output(name):
    """p @ v, gated and projected, equals the layer's own Attention output: the weights are
    the ones the model applies (same q/k, QK-norm, RoPE, GQA sharing, scale, mask)."""
    model = build(name)
    cfg = model.cfg
    ids = tokens(cfg)
    layer = cfg.n_layers - 1  # past the earlier blocks, MoE ones included
    block = model.blocks[layer]
    h_ND = block.attn_norm(residual_stream(model, ids, layer))
    positions_BT = jnp.arange(T)[None]
    expected_ND = block.attn(h_ND, 1, T, positions_BT, None)

    p_HTS = attention_weights(model, ids, layer)
    v_SKd = block.attn.kv(h_ND)[:, 1]
    G = cfg.n_heads // cfg.kv_heads
    v_SHd = jnp.repeat(v_SKd, G, axis=1)  # query head h reads kv head h // G
    y_THd = jnp.einsum("hts,shd->thd", p_HTS, v_SHd)
    if cfg.attn_gate != "none":
        gate = jax.nn.sigmoid(block.attn.gate(h_ND))
        y_THd = y_THd * (gate[:, :, None] if cfg.attn_gate == "headwise" else gate)
    np.testing.assert_allclose(block.attn.out(y_THd), expected_ND, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "moe_swiglu_shared"])
def test_residual_stream_after_the_last_block_gives_the_logits(name):
    model = build(name)
    ids = tokens(model.cfg)
    h_ND = model.final_norm(residual_stream(model, ids, model.cfg.n_layers))
    head_DV = model.embed[...].T if model.cfg.tie_embeddings else model.lm_head[...]
    logits, _ = model(jnp.asarray(ids)[None])
    np.testing.assert_allclose(h_ND @ head_DV, logits[0], rtol=1e-4, atol=1e-4)


def test_queries_and_keys_shapes_and_a_bad_layer():
    model = build("modern")
    cfg = model.cfg
    h_ND = model.blocks[0].attn_norm(residual_stream(model, tokens(cfg), 0))
    q, k = queries_keys(model.blocks[0].attn, h_ND, T)
    assert q.shape == (1, T, cfg.n_heads, cfg.head_dim) and k.shape == (1, T, cfg.kv_heads, cfg.head_dim)
    with pytest.raises(ValueError, match="out of range"):
        attention_weights(model, tokens(cfg), cfg.n_layers)


@pytest.mark.parametrize("name", ["modern", "moe_swiglu_shared"])
def test_a_scanned_model_gives_the_unrolled_models_weights(name):
    """model.scan_layers: the same weights stacked (model/layout.py) give the same attention
    of every layer (a block read out of its segment's stacked arrays: stack.layer_block)."""
    import dataclasses

    from mylm_jax.model.layout import to_scanned
    from mylm_jax.model.params import flat_params, load_flat_params
    from parity_tests.tolerances import SCAN_ABS, SCAN_REL, compare

    unrolled = build(name)
    cfg = dataclasses.replace(unrolled.cfg, scan_layers=True)
    scanned = nnx.eval_shape(lambda: GPT(cfg, nnx.Rngs(0)))
    load_flat_params(scanned, to_scanned(flat_params(unrolled), cfg))
    ids = tokens(cfg)
    for layer in range(cfg.n_layers):  # probabilities in [0, 1]: within a few float32 ulps
        compare(f"attention {layer}", attention_weights(scanned, ids, layer), attention_weights(unrolled, ids, layer),
                abs_tol=SCAN_ABS)
    compare("residual stream", residual_stream(scanned, ids, cfg.n_layers),
            residual_stream(unrolled, ids, cfg.n_layers), rel_tol=SCAN_REL)  # relative to its largest |value|
