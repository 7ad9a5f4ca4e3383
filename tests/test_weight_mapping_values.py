"""MyLM <-> transformers tensors, value by value (mylm_jax/interop/mapping.py).

A round trip alone would pass a mapping that swaps k and v both ways, or transposes both
ways; here every MyLM parameter holds distinct numbers and each transformers tensor is
checked against the part of the parameter it must hold, the layout written out with
reshape and transpose, in the last layer (so a wrong layer index shows). The names are
transformers' own (tests/test_hf_interop.py loads them into transformers).
"""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from mylm_jax.interop.architectures import choose
from mylm_jax.interop.errors import InteropError
from mylm_jax.interop.mapping import from_hf, links, to_hf
from mylm_jax.model.gpt import GPT
from mylm_jax.model.params import param_shapes
from mylm_jax.variants import MODERN, variant

TINY = {"vocab_size": 16, "max_seq_len": 8, "d_model": 8, "n_heads": 2, "n_layers": 2, "d_ff": 12}
CASES = {  # arch -> the MyLM model it exports
    "gpt2": variant("gpt2", **TINY),
    "gpt2_untied_nobias": variant("gpt2_untied_nobias", **TINY),
    "llama": variant("modern", **TINY, bias=True),
    "qwen3": variant("modern_qknorm_mha", **TINY),
    "stablelm": variant("modern_mqa_layernorm_untied", **TINY, qk_norm=True),
    "mixtral": variant("moe_ragged", **TINY),
    "qwen3_moe": variant("modern", **{**TINY, **MODERN}, qk_norm=True, n_experts=3, top_k=2, moe_layers=(1,),
                         router_renormalize=False),
}
D, F = 8, 12  # TINY's d_model and d_ff


def _arch(case):
    return case.split("_untied")[0]


def _flat(m):
    """Every parameter at its shape, holding numbers no other parameter holds (exact in float32)."""
    shapes = param_shapes(nnx.eval_shape(lambda: GPT(m, nnx.Rngs(0))))
    flat, offset = {}, 0
    for name, shape in sorted(shapes.items()):
        flat[name] = (np.arange(np.prod(shape), dtype=np.float32) + offset).reshape(shape)
        offset += flat[name].size
    return flat, shapes


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    m = CASES[request.param]
    assert choose(m) == _arch(request.param)
    flat, shapes = _flat(m)
    return _arch(request.param), m, flat, shapes, to_hf(_arch(request.param), m, flat)


def test_a_round_trip_is_bit_exact_and_every_tensor_is_contiguous_float32(case):
    arch, m, flat, shapes, hf = case
    assert all(t.dtype == np.float32 and t.flags.c_contiguous for t in hf.values())
    back = from_hf(arch, m, hf, shapes, "x")
    assert back.keys() == flat.keys()
    for name in flat:
        assert back[name].dtype == np.float32, name
        np.testing.assert_array_equal(back[name], flat[name], err_msg=name)


def test_gpt2_tensors():
    m = CASES["gpt2"]
    flat, _ = _flat(m)
    hf, b, h = to_hf("gpt2", m, flat), "blocks.1", "transformer.h.1"
    assert list(hf) == ["transformer.wte.weight", "transformer.wpe.weight"] + [
        f"transformer.h.{i}.{n}" for i in range(2) for n in (
            "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
            "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
            "mlp.c_proj.weight", "mlp.c_proj.bias")] + ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    same = {"transformer.wte.weight": "embed", "transformer.wpe.weight": "pos_embed",
            f"{h}.ln_1.weight": f"{b}.attn_norm.scale", f"{h}.ln_1.bias": f"{b}.attn_norm.bias",
            f"{h}.ln_2.weight": f"{b}.mlp_norm.scale", f"{h}.ln_2.bias": f"{b}.mlp_norm.bias",
            f"{h}.attn.c_proj.bias": f"{b}.attn.out.bias", f"{h}.mlp.c_fc.weight": f"{b}.mlp.fc.kernel",
            f"{h}.mlp.c_fc.bias": f"{b}.mlp.fc.bias", f"{h}.mlp.c_proj.weight": f"{b}.mlp.proj.kernel",
            f"{h}.mlp.c_proj.bias": f"{b}.mlp.proj.bias", "transformer.ln_f.weight": "final_norm.scale",
            "transformer.ln_f.bias": "final_norm.bias"}
    for hf_name, name in same.items():  # Conv1D keeps [in, out]: no transpose
        np.testing.assert_array_equal(hf[hf_name], flat[name], err_msg=hf_name)
    q, kv = flat[f"{b}.attn.q.kernel"], flat[f"{b}.attn.kv.kernel"]  # [D, H, d], [D, 2, H, d]
    np.testing.assert_array_equal(hf[f"{h}.attn.c_attn.weight"], np.concatenate(
        [q.reshape(D, D), kv[:, 0].reshape(D, D), kv[:, 1].reshape(D, D)], axis=1))  # q | k | v
    qb, kvb = flat[f"{b}.attn.q.bias"], flat[f"{b}.attn.kv.bias"]
    np.testing.assert_array_equal(hf[f"{h}.attn.c_attn.bias"], np.concatenate(
        [qb.reshape(-1), kvb[0].reshape(-1), kvb[1].reshape(-1)]))
    np.testing.assert_array_equal(hf[f"{h}.attn.c_proj.weight"], flat[f"{b}.attn.out.kernel"].reshape(D, D))


def test_gpt2_without_biases_or_positions_writes_zeros_and_an_untied_head():
    m = CASES["gpt2_untied_nobias"]
    flat, _ = _flat(m)
    hf = to_hf("gpt2", m, flat)
    np.testing.assert_array_equal(hf["lm_head.weight"], flat["lm_head"].T)  # [D, V] -> nn.Linear [V, D]
    assert list(hf)[-1] == "lm_head.weight"
    for name, shape in (("transformer.h.1.attn.c_attn.bias", (3 * D,)), ("transformer.h.1.ln_1.bias", (D,)),
                        ("transformer.h.1.mlp.c_fc.bias", (F,)), ("transformer.h.1.attn.c_proj.bias", (D,)),
                        ("transformer.ln_f.bias", (D,))):
        np.testing.assert_array_equal(hf[name], np.zeros(shape, np.float32), err_msg=name)
    m = variant("no_position", **TINY)
    flat, _ = _flat(m)
    np.testing.assert_array_equal(to_hf("gpt2", m, flat)["transformer.wpe.weight"], np.zeros((8, D), np.float32))


def _linear(kernel, n_in=1):
    """nn.Linear's [out, in] of a MyLM kernel whose first n_in dims are its input."""
    return kernel.reshape(int(np.prod(kernel.shape[:n_in])), -1).T


def test_llama_tensors_with_biases():
    m = CASES["llama"]
    flat, _ = _flat(m)
    hf, b, p = to_hf("llama", m, flat), "blocks.1", "model.layers.1"
    assert list(hf)[:1] == ["model.embed_tokens.weight"] and list(hf)[-1] == "model.norm.weight"
    assert [n for n in hf if n.startswith(p)] == [f"{p}.{n}" for n in (
        "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.o_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias",
        "self_attn.o_proj.bias", "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
        "mlp.down_proj.weight", "mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias")]
    kv, gate_up = flat[f"{b}.attn.kv.kernel"], flat[f"{b}.mlp.gate_up.kernel"]  # [D, 2, K, d], [D, 2, F]
    want = {
        "model.embed_tokens.weight": flat["embed"], "model.norm.weight": flat["final_norm.scale"],
        f"{p}.input_layernorm.weight": flat[f"{b}.attn_norm.scale"],
        f"{p}.post_attention_layernorm.weight": flat[f"{b}.mlp_norm.scale"],
        f"{p}.self_attn.q_proj.weight": _linear(flat[f"{b}.attn.q.kernel"]),
        f"{p}.self_attn.k_proj.weight": _linear(kv[:, 0]), f"{p}.self_attn.v_proj.weight": _linear(kv[:, 1]),
        f"{p}.self_attn.o_proj.weight": _linear(flat[f"{b}.attn.out.kernel"], 2),
        f"{p}.self_attn.q_proj.bias": flat[f"{b}.attn.q.bias"].reshape(-1),
        f"{p}.self_attn.k_proj.bias": flat[f"{b}.attn.kv.bias"][0].reshape(-1),
        f"{p}.self_attn.v_proj.bias": flat[f"{b}.attn.kv.bias"][1].reshape(-1),
        f"{p}.self_attn.o_proj.bias": flat[f"{b}.attn.out.bias"],
        f"{p}.mlp.gate_proj.weight": gate_up[:, 0].T, f"{p}.mlp.up_proj.weight": gate_up[:, 1].T,
        f"{p}.mlp.down_proj.weight": flat[f"{b}.mlp.proj.kernel"].T,
        f"{p}.mlp.gate_proj.bias": flat[f"{b}.mlp.gate_up.bias"][0],
        f"{p}.mlp.up_proj.bias": flat[f"{b}.mlp.gate_up.bias"][1],
        f"{p}.mlp.down_proj.bias": flat[f"{b}.mlp.proj.bias"],
    }
    for name, value in want.items():
        np.testing.assert_array_equal(hf[name], value, err_msg=name)


def test_qwen3_and_stablelm_qk_norms():
    flat, _ = _flat(CASES["qwen3"])
    hf = to_hf("qwen3", CASES["qwen3"], flat)
    np.testing.assert_array_equal(hf["model.layers.1.self_attn.q_norm.weight"], flat["blocks.1.attn.q_norm.scale"])
    np.testing.assert_array_equal(hf["model.layers.1.self_attn.k_norm.weight"], flat["blocks.1.attn.k_norm.scale"])
    assert "lm_head.weight" not in hf  # tied
    m = CASES["stablelm"]
    flat, _ = _flat(m)
    hf, p = to_hf("stablelm", m, flat), "model.layers.1"
    # One LayerNorm per head in StableLM: MyLM's shared scale, written to each (2 q heads, 1 kv head).
    assert sorted(n for n in hf if "layernorm.norms" in n and n.startswith(p)) == [
        f"{p}.self_attn.k_layernorm.norms.0.weight", f"{p}.self_attn.q_layernorm.norms.0.weight",
        f"{p}.self_attn.q_layernorm.norms.1.weight"]
    for h in (0, 1):
        np.testing.assert_array_equal(hf[f"{p}.self_attn.q_layernorm.norms.{h}.weight"],
                                      flat["blocks.1.attn.q_norm.scale"])
    np.testing.assert_array_equal(hf[f"{p}.self_attn.k_layernorm.norms.0.weight"], flat["blocks.1.attn.k_norm.scale"])
    for name in (f"{p}.input_layernorm.bias", f"{p}.post_attention_layernorm.bias", "model.norm.bias"):
        np.testing.assert_array_equal(hf[name], np.zeros(D, np.float32), err_msg=name)
    np.testing.assert_array_equal(hf["lm_head.weight"], flat["lm_head"].T)


@pytest.mark.parametrize("arch, prefix, names", [
    ("mixtral", "block_sparse_moe", ("w1", "w3", "w2")),
    ("qwen3_moe", "mlp", ("gate_proj", "up_proj", "down_proj")),
])
def test_expert_tensors(arch, prefix, names):
    m = CASES[arch]
    flat, _ = _flat(m)
    hf, p, b = to_hf(arch, m, flat), f"model.layers.1.{prefix}", "blocks.1.mlp"
    w_in, w_out = flat[f"{b}.w_in"], flat[f"{b}.w_out"]  # [E, D, 2, F], [E, F, D]
    np.testing.assert_array_equal(hf[f"{p}.gate.weight"], flat[f"{b}.router"].T)  # router [D, E] -> [E, D]
    gate, up, down = names
    for e in range(m.n_experts):
        np.testing.assert_array_equal(hf[f"{p}.experts.{e}.{gate}.weight"], w_in[e, :, 0].T)
        np.testing.assert_array_equal(hf[f"{p}.experts.{e}.{up}.weight"], w_in[e, :, 1].T)
        np.testing.assert_array_equal(hf[f"{p}.experts.{e}.{down}.weight"], w_out[e].T)
    assert sum(".experts." in n for n in hf) == 3 * m.n_experts * (2 if arch == "mixtral" else 1)
    if arch == "qwen3_moe":  # layer 0 is dense
        assert "model.layers.0.mlp.gate_proj.weight" in hf and "model.layers.0.mlp.gate.weight" not in hf


def test_links_name_each_tensor_once_in_file_order():
    for case, m in CASES.items():
        names = [link.hf for link in links(_arch(case), m)]
        assert list(dict.fromkeys(names)) == list(to_hf(_arch(case), m, _flat(m)[0]))


def test_an_import_refuses_what_mylm_cannot_hold_exactly():
    m = CASES["stablelm"]
    flat, shapes = _flat(m)
    hf = to_hf("stablelm", m, flat)
    p = "model.layers.1.self_attn"

    def refused(change, message):
        tensors = dict(hf)
        change(tensors)
        with pytest.raises(InteropError, match=message):
            from_hf("stablelm", m, tensors, shapes, "ckpt")

    refused(lambda t: t.pop(f"{p}.v_proj.weight"),
            rf"^ckpt: no tensor {p}.v_proj.weight \(expected for this stablelm config\)$")
    refused(lambda t: t.update(extra=np.zeros(1), more=np.zeros(1)), r"^ckpt: unexpected tensor extra \(and 1 more\)$")
    refused(lambda t: t.update(extra=np.zeros(1)), r"^ckpt: unexpected tensor extra$")
    refused(lambda t: t.update({f"{p}.q_proj.weight": np.zeros((D, D + 1), np.float32)}),
            rf"^ckpt: {p}.q_proj.weight has shape \(8, 9\), expected \(8, 8\)$")
    refused(lambda t: t.update({"model.norm.bias": np.ones(D, np.float32)}),
            r"^ckpt: model.norm.bias is not all zeros, and the MyLM model has no such tensor "
            r"\(its LayerNorms have biases only with model.bias=true\)$")
    refused(lambda t: t.update({f"{p}.q_layernorm.norms.1.weight": hf[f"{p}.q_layernorm.norms.1.weight"] + 1}),
            rf"^ckpt: {p}.q_layernorm.norms.1.weight differs from {p}.q_layernorm.norms.0.weight; "
            "MyLM shares one q_norm across heads$")
    with pytest.raises(InteropError, match=r"^ckpt: lm_head.weight maps to lm_head, which this MyLM model does not "
                                           r"have$"):
        from_hf("stablelm", m, hf, {k: v for k, v in shapes.items() if k != "lm_head"}, "ckpt")
    # Buffers that are no parameters are passed over.
    tensors = dict(hf, **{f"{p}.rotary_emb.inv_freq": np.ones(2), "model.layers.0.attn.bias": np.ones(2)})
    np.testing.assert_array_equal(from_hf("stablelm", m, tensors, shapes, "ckpt")["embed"], flat["embed"])
