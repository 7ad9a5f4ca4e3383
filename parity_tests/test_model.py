"""Whole-model parity for every variant: logits, loss, MoE aux, every gradient, converter.

For each named variant the JAX GPT gets random weights, the converter copies them into
the torch GPT, and both run the same batch in float32, once as plain causal rows and
once packed (segment_ids with padding + restarting positions). The loss is the
training loss: token-mean cross-entropy over valid tokens plus, for MoE, the weighted
load-balancing and z-losses. JAX gradients are converted to torch layout with the
converter and compared with torch's .grad, parameter by parameter.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from mylm_jax.model.gpt import GPT as JaxGPT
from mylm_jax.model.params import (build_with_random_params, flat_arrays, flat_params, load_flat_params,
                                   param_shapes)
from mylm_jax.variants import VARIANTS, small_config
from mylm_torch.convert import jax_to_torch, param_layout, torch_to_jax
from mylm_torch.model import GPT as TorchGPT
from parity_tests.conftest import flat_aux, jax_training_loss, packed_batch, parity_config, torch_training_loss
from parity_tests.tolerances import AUX_REL, GRAD_REL, LOGITS_ABS, LOSS_ABS, ZERO_GRAD_ABS, compare

B, T = 2, 16

def _batch(cfg, packed: bool, seed: int = 0):
    """tokens, targets, segment_ids (or None), positions (or None), loss mask: numpy [B, T]."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, (B, T), dtype=np.int32)
    targets = rng.integers(0, cfg.vocab_size, (B, T), dtype=np.int32)
    if not packed:
        return tokens, targets, None, None, np.ones((B, T), np.float32)
    segment_ids, positions = packed_batch(B, T, seed=seed + 1)
    return tokens, targets, segment_ids, positions, (segment_ids != 0).astype(np.float32)


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request):
    """(name, cfg, JAX model with random weights, torch model with the same weights)."""
    cfg = parity_config(request.param)
    jax_model = build_with_random_params(lambda: JaxGPT(cfg, nnx.Rngs(0)), seed=1)
    torch_model = TorchGPT(cfg)
    torch_model.load_state_dict(jax_to_torch(flat_params(jax_model), cfg), strict=True)
    return request.param, cfg, jax_model, torch_model


def _as(framework, x):
    if x is None:
        return None
    return jnp.asarray(x) if framework == "jax" else torch.from_numpy(x)


@pytest.mark.parametrize("packed", [False, True], ids=["causal", "packed"])
def test_logits_loss_and_grads(variant, packed):
    name, cfg, jax_model, torch_model = variant
    name = f"{name} {'packed' if packed else 'causal'}"
    batch = _batch(cfg, packed)

    (loss_jax, (logits_jax, aux_jax)), grads_jax = nnx.value_and_grad(jax_training_loss, has_aux=True)(
        jax_model, *(_as("jax", x) for x in batch))
    torch_model.zero_grad(set_to_none=True)
    loss_torch, logits_torch, aux_torch = torch_training_loss(torch_model, *(_as("torch", x) for x in batch))
    loss_torch.backward()

    compare(f"{name} logits", logits_torch, logits_jax, abs_tol=LOGITS_ABS, logits=True)
    compare(f"{name} loss", loss_torch, loss_jax, abs_tol=LOSS_ABS)
    aux_torch, aux_jax = flat_aux(aux_torch), flat_aux(aux_jax)
    assert set(aux_torch) == set(aux_jax) and bool(aux_jax) == (cfg.n_experts > 0)
    for key in aux_jax:
        compare(f"{name} {key}", aux_torch[key], aux_jax[key], rel_tol=AUX_REL)

    # Every parameter's gradient: JAX grads -> torch layout (the converter) vs torch .grad.
    grads_jax_torch_layout = jax_to_torch(flat_arrays(grads_jax), cfg)
    params_torch = dict(torch_model.named_parameters())
    assert set(params_torch) == set(grads_jax_torch_layout)
    for pname, p in params_torch.items():
        assert p.grad is not None, f"{name}: torch has no gradient for {pname}"
        if _zero_gradient(cfg, pname):
            compare(f"{name} grad {pname} (0 in exact math)", p.grad, 0 * p.grad, abs_tol=ZERO_GRAD_ABS)
            compare(f"{name} grad {pname} (0 in exact math)", grads_jax_torch_layout[pname],
                    0 * p.grad, abs_tol=ZERO_GRAD_ABS)
        else:
            compare(f"{name} grad {pname}", p.grad, grads_jax_torch_layout[pname], rel_tol=GRAD_REL)


def _zero_gradient(cfg, torch_name: str) -> bool:
    """Parameters whose gradient is 0 in exact arithmetic (see ZERO_GRAD_ABS): a bias added
    to every key shifts each score row by a constant, which softmax ignores (unless RoPE
    rotates it differently at each position)."""
    return cfg.position != "rope" and torch_name.endswith("attn.k_norm.bias")


def test_round_trip_is_exact(variant):
    """jax -> torch -> jax gives back every array bit for bit, and torch -> jax -> torch too."""
    name, cfg, jax_model, torch_model = variant
    flat = flat_params(jax_model)
    back = torch_to_jax(jax_to_torch(flat, cfg), cfg)
    assert list(back) == list(param_layout(cfg))
    for key, value in flat.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        assert np.array_equal(back[key], value), f"{name}: {key} changed in the round trip"
    state = torch_model.state_dict()
    state_back = jax_to_torch(torch_to_jax(state, cfg), cfg)
    for key, value in state.items():
        assert torch.equal(state_back[key], value), f"{name}: {key} changed in the round trip"


def test_fresh_torch_model_loads_into_jax(variant):
    """A torch-initialised model, converted with torch_to_jax, gives JAX the same logits."""
    name, cfg, _, _ = variant
    torch.manual_seed(0)
    fresh = TorchGPT(cfg)
    jax_model = build_with_random_params(lambda: JaxGPT(cfg, nnx.Rngs(0)), seed=2)  # weights about to be replaced
    load_flat_params(jax_model, torch_to_jax(fresh.state_dict(), cfg))
    tokens, _, segment_ids, positions, _ = _batch(cfg, packed=True, seed=3)
    logits_jax, _ = jax_model(*(_as("jax", x) for x in (tokens, segment_ids, positions)))
    with torch.no_grad():
        logits_torch, _ = fresh(*(_as("torch", x) for x in (tokens, segment_ids, positions)))
    compare(f"{name} fresh torch -> jax logits", logits_torch, logits_jax, abs_tol=LOGITS_ABS, logits=True)


def test_converter_rejects_bad_input():
    cfg = parity_config("moe_swiglu_shared")
    flat = {name: np.zeros(e.jax_shape, np.float32) for name, e in param_layout(cfg).items()}
    state = jax_to_torch(flat, cfg)

    missing = dict(flat)
    del missing["blocks.2.mlp.w_in"]
    with pytest.raises(ValueError, match="missing key 'blocks.2.mlp.w_in'"):
        jax_to_torch(missing, cfg)
    with pytest.raises(ValueError, match="unexpected key 'blocks.1.mlp.router'"):
        jax_to_torch({**flat, "blocks.1.mlp.router": np.zeros((64, 4), np.float32)}, cfg)
    with pytest.raises(ValueError, match="blocks.0.attn.kv.kernel"):
        jax_to_torch({**flat, "blocks.0.attn.kv.kernel": np.zeros((64, 2, 4, 16), np.float32)}, cfg)

    with pytest.raises(ValueError, match="missing key 'final_norm.weight'"):
        torch_to_jax({k: v for k, v in state.items() if k != "final_norm.weight"}, cfg)
    with pytest.raises(ValueError, match="unexpected key 'pos_embed.weight'"):
        torch_to_jax({**state, "pos_embed.weight": torch.zeros(32, 64)}, cfg)
    with pytest.raises(ValueError, match="blocks.0.mlp.w_out"):
        torch_to_jax({**state, "blocks.0.mlp.w_out": torch.zeros(4, 64, 64)}, cfg)


@settings(max_examples=25, deadline=None)
@given(
    position=st.sampled_from(["learned", "rope", "none"]),
    norm=st.sampled_from(["layernorm", "rmsnorm"]),
    mlp=st.sampled_from(["gelu", "swiglu"]),
    bias=st.booleans(),
    tie_embeddings=st.booleans(),
    qk_norm=st.booleans(),
    attn_gate=st.sampled_from(["none", "headwise", "elementwise"]),
    n_kv_heads=st.sampled_from([1, 2, 4]),
    n_experts=st.sampled_from([0, 2, 4]),
    n_shared_experts=st.integers(0, 2),
    moe_layers=st.sampled_from([None, (0,), (1,)]),
    seed=st.integers(0, 2**16),
)
def test_layout_matches_both_models(seed, **options):
    """For any config: the converter's table has exactly the JAX model's names and shapes and
    the torch model's names and shapes, and a round trip of random arrays is exact."""
    if not options["n_experts"]:
        options.update(n_shared_experts=0, moe_layers=None)
    cfg = small_config(d_model=32, vocab_size=16, max_seq_len=8, d_ff=48, **options)
    layout = param_layout(cfg)
    jax_abstract = nnx.eval_shape(lambda: JaxGPT(cfg, nnx.Rngs(0)))  # shapes only, no compute
    assert param_shapes(jax_abstract) == {name: e.jax_shape for name, e in layout.items()}
    torch_shapes = {k: tuple(v.shape) for k, v in TorchGPT(cfg).state_dict().items()}
    assert torch_shapes == {e.torch_name: e.torch_shape for e in layout.values()}

    rng = np.random.default_rng(seed)
    flat = {name: rng.normal(size=e.jax_shape).astype(np.float32) for name, e in layout.items()}
    back = torch_to_jax(jax_to_torch(flat, cfg), cfg)
    assert all(np.array_equal(back[k], v) for k, v in flat.items())
