"""Properties of the JAX model family that need no twin: causality, packing, shapes,
parameter counts, logical axes, init schemes, compute dtype."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mylm_jax.model.accounting import active_matmul_params, flops_per_token, param_count
from mylm_jax.model.gpt import GPT
from mylm_jax.model.params import (build_with_random_params, count_params, flat_params, load_flat_params,
                                   logical_axes)
from mylm_jax.variants import VARIANTS, variant

LOGICAL_NAMES = {None, "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "expert"}


def _logits(model, tokens, segment_ids=None, positions=None):
    return model(jnp.asarray(tokens), segment_ids, positions)[0]


@pytest.mark.parametrize("name", VARIANTS)
def test_causality_gradient_of_logit_t_ignores_later_tokens(name):
    """d logits[t] / d embedding(token at s) is zero for every s > t, nonzero for s <= t.

    Every token is distinct and the head is untied, so embedding row tokens[s] is
    read only at position s: its gradient is the gradient w.r.t. input s.
    """
    cfg = variant(name, tie_embeddings=False)
    model = build_with_random_params(lambda: GPT(cfg, nnx.Rngs(0)), seed=0)
    T = 12
    tokens = jnp.asarray(np.random.default_rng(0).permutation(cfg.vocab_size)[:T][None])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def grad_of_logit_sum_at(t):
        f = lambda params: nnx.merge(graphdef, params, rest)(tokens)[0][0, t].sum()
        return jax.grad(f)(params)["embed"][...]

    # d logits[t] / d embed for every t; lax.map, not vmap (jacrev): ragged_dot has no batching rule.
    grad_TVD = jax.jit(lambda: jax.lax.map(grad_of_logit_sum_at, jnp.arange(T)))()
    per_input_TS = np.abs(np.asarray(grad_TVD[:, tokens[0]])).sum(-1)  # [t, s]
    later = np.triu(np.ones((T, T), bool), k=1)
    assert np.all(per_input_TS[later] == 0), f"later inputs leak into earlier logits:\n{per_input_TS}"
    assert np.all(per_input_TS[~later] > 0), f"some earlier inputs are unused:\n{per_input_TS}"


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("impl", ["reference", "dot_product", "blockwise"])
def test_packed_documents_equal_documents_run_alone(name, impl):
    cfg = variant(name, attention_impl=impl, attention_block=3)
    model = build_with_random_params(lambda: GPT(cfg, nnx.Rngs(0)), seed=1)
    rng = np.random.default_rng(1)
    lengths = [7, 5, 4]
    docs = [rng.integers(0, cfg.vocab_size, n) for n in lengths]
    tokens = np.concatenate(docs)[None]
    segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])[None]
    positions = np.concatenate([np.arange(n) for n in lengths])[None]
    packed = np.asarray(_logits(model, tokens, jnp.asarray(segment_ids), jnp.asarray(positions)))
    start = 0
    for doc in docs:
        alone = np.asarray(_logits(model, doc[None]))
        np.testing.assert_allclose(packed[0, start:start + len(doc)], alone[0], atol=2e-5, rtol=0)
        start += len(doc)


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_count_matches_formula_and_axes_are_named(name):
    cfg = variant(name)
    model = GPT(cfg, nnx.Rngs(0))
    assert count_params(model) == param_count(cfg)
    params = flat_params(model)
    for path, axes in logical_axes(model).items():
        assert len(axes) == params[path].ndim, path
        assert set(axes) <= LOGICAL_NAMES, (path, axes)


def test_formula_counts_the_gpt2_124m_model_like_nanogpt():
    # nanoGPT's GPT-2 small (vocab 50304, T 1024, biases, tied): 124,475,904 params in total.
    from mylm_jax.config import ModelConfig
    cfg = ModelConfig(vocab_size=50304, max_seq_len=1024, d_model=768, n_layers=12, n_heads=12)
    assert param_count(cfg) == 124_475_904
    # 6N + 12 L H d T with N = 12 layers x (4 D^2 attention + 8 D^2 MLP) + the head D x V
    N = 12 * 12 * 768 ** 2 + 768 * 50304
    assert active_matmul_params(cfg) == N
    assert flops_per_token(cfg, 1024) == 6 * N + 12 * 12 * 768 * 1024


def test_moe_flops_count_only_active_experts():
    dense = variant("moe_gelu", n_experts=0, top_k=2)
    moe = variant("moe_gelu")  # 4 experts, top-2, each expert as wide as the dense MLP
    per_layer_mlp = 2 * dense.d_model * dense.ffn_dim
    router = dense.d_model * 4
    assert active_matmul_params(moe) == active_matmul_params(dense) + dense.n_layers * (per_layer_mlp + router)


def test_output_shapes_and_moe_aux():
    cfg = variant("moe_swiglu_shared", n_layers=3, moe_layers=(0, 2))
    logits, aux = GPT(cfg, nnx.Rngs(0))(jnp.zeros((2, 8), jnp.int32))
    assert logits.shape == (2, 8, cfg.vocab_size) and logits.dtype == jnp.float32
    assert set(aux["losses"]) == {"load_balance", "router_z"}
    assert aux["metrics"]["expert_load"].shape == (2, cfg.n_experts)  # one row per MoE layer
    np.testing.assert_allclose(aux["metrics"]["expert_load"].sum(-1), 1.0, rtol=1e-6)
    assert GPT(variant("gpt2"), nnx.Rngs(0))(jnp.zeros((1, 4), jnp.int32))[1] == {"losses": {}, "metrics": {}}


def test_flat_params_round_trip_and_shape_errors():
    a, b = GPT(variant("modern"), nnx.Rngs(0)), GPT(variant("modern"), nnx.Rngs(1))
    load_flat_params(b, flat_params(a))
    tokens = jnp.arange(8)[None]
    np.testing.assert_array_equal(_logits(a, tokens), _logits(b, tokens))
    bad = flat_params(a)
    bad["embed"] = bad["embed"][:, :3]
    with pytest.raises(ValueError, match="embed: shape"):
        load_flat_params(b, bad)
    del bad["embed"]
    with pytest.raises(ValueError, match="missing \\['embed'\\]"):
        load_flat_params(b, bad)


def _stds(cfg):
    params = flat_params(GPT(cfg, nnx.Rngs(0)))
    return {path: float(v.std()) for path, v in params.items() if path.endswith("kernel")}, params


@pytest.mark.parametrize("scheme", ["normal", "gpt2_scaled", "xavier", "kaiming", "zero_out"])
def test_init_schemes(scheme):
    cfg = variant("gpt2", init=scheme, d_model=128, n_layers=4, tie_embeddings=False)
    stds, params = _stds(cfg)
    D, F = cfg.d_model, cfg.ffn_dim
    expected_hidden = {"normal": 0.02, "gpt2_scaled": 0.02, "xavier": math.sqrt(2 / (D + F)),
                       "kaiming": 1 / math.sqrt(D), "zero_out": 0.02}[scheme]
    expected_out = {"normal": 0.02, "gpt2_scaled": 0.02 / math.sqrt(8), "xavier": math.sqrt(2 / (F + D)),
                    "kaiming": 1 / math.sqrt(F), "zero_out": 0.0}[scheme]
    # Sample stds of >= 16k draws: 3% relative is > 5 standard errors.
    assert stds["blocks.0.mlp.fc.kernel"] == pytest.approx(expected_hidden, rel=0.03)
    assert stds["blocks.3.mlp.proj.kernel"] == pytest.approx(expected_out, rel=0.03, abs=1e-12)
    assert float(params["embed"].std()) == pytest.approx(0.02, rel=0.03)
    assert np.all(params["blocks.0.attn_norm.scale"] == 1) and np.all(params["blocks.0.mlp.fc.bias"] == 0)
    if scheme == "xavier":  # uniform: bounded by sqrt(6 / (fan_in + fan_out))
        assert np.abs(params["blocks.0.mlp.fc.kernel"]).max() <= math.sqrt(6 / (D + F))
    if scheme == "zero_out":
        assert not params["lm_head"].any()
        logits, _ = GPT(cfg, nnx.Rngs(0))(jnp.arange(8)[None])
        assert not np.asarray(logits).any()


def test_same_seed_same_weights_different_seed_different_weights():
    cfg = variant("modern")
    a, b, c = (flat_params(GPT(cfg, nnx.Rngs(s))) for s in (3, 3, 4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["embed"], c["embed"])


@pytest.mark.parametrize("name", ["gpt2", "moe_ragged"])
def test_bfloat16_compute_stays_close_to_float32(name):
    f32 = GPT(variant(name), nnx.Rngs(0))
    bf16 = GPT(variant(name, dtype="bfloat16"), nnx.Rngs(0))
    tokens = jnp.arange(16)[None] % 100
    a, b = np.asarray(_logits(f32, tokens)), np.asarray(_logits(bf16, tokens))
    assert b.dtype == np.float32
    # bfloat16 keeps 8 mantissa bits (relative rounding ~4e-3 per input); logits of this
    # size (|logit| ~ 0.1) move by ~1e-3. Loose on purpose: this checks plumbing, not parity.
    assert np.abs(a - b).max() < 2e-2
    assert np.abs(a - b).max() > 0, "bfloat16 compute should change the numbers at all"
