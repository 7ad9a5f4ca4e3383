"""Which `transformers` architecture computes exactly the function a MyLM model computes, and back.

    choose(model_cfg)                -> "gpt2" | "llama" | "qwen3" | "stablelm" | "mixtral" | "qwen3_moe",
                                        or InteropError naming the option none of them has
    hf_config(model_cfg, arch, ...)  -> the dict of config.json
    model_config(config_json, where) -> (arch, ModelConfig) of a transformers checkpoint, or InteropError

The families (docs/interop.md has the tensor-by-tensor table):

    MyLM                                                        transformers (model_type)
    learned (or no) positions, LayerNorm, exact GELU, MHA       gpt2   (activation_function=gelu, not gelu_new)
    RoPE, RMSNorm, SwiGLU, GQA, biases on all or none           llama  (attention_bias = mlp_bias = model.bias)
      + QK-norm (no biases)                                     qwen3
    RoPE, LayerNorm, SwiGLU, GQA (+ QK-norm), no biases         stablelm (partial_rotary_factor=1)
    RoPE, RMSNorm, SwiGLU experts on every layer, renormalised  mixtral
      + QK-norm (MoE on any layers, renormalised or not)        qwen3_moe (mlp_only_layers, norm_topk_prob)

Exact means the same function up to float32 rounding, never an approximation. Where the
transformers model has a tensor the MyLM model lacks (the biases of a bias-free GPT-2, the
LayerNorm biases of StableLM, GPT-2's position table for position=none), the export writes
zeros: adding 0 changes nothing. The conventions that agree without any change of weights:
RoPE (MyLM rotates the pairs (i, i + d/2) by pos * theta^(-2i/d): HF's `rotate_half` layout,
so q and k need no permutation), the attention scale 1/sqrt(d), GQA (query head h reads kv
head h // G in both: HF's `repeat_kv`), norms computed in float32 with eps inside the sqrt
(LayerNorm's variance biased, as torch's), and tied embeddings.

Keys a config.json leaves out take the transformers class defaults (DEFAULTS; a test checks
them against the installed transformers). This module imports no jax and no transformers.
"""

from __future__ import annotations

from mylm_jax.config import ConfigError, ModelConfig
from mylm_jax.interop.errors import InteropError

ARCHITECTURES = {  # model_type -> the class config.json's "architectures" names
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "stablelm": "StableLmForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}

# The transformers defaults of the keys that change the function (transformers 5.x classes).
DEFAULTS = {
    "gpt2": dict(n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5, scale_attn_weights=True,
                 scale_attn_by_inverse_layer_idx=False, add_cross_attention=False, tie_word_embeddings=True),
    "llama": dict(num_key_value_heads=None, head_dim=None, hidden_act="silu", rms_norm_eps=1e-6, rope_theta=10000.0,
                  attention_bias=False, mlp_bias=False, tie_word_embeddings=False),
    "qwen3": dict(num_key_value_heads=32, head_dim=128, hidden_act="silu", rms_norm_eps=1e-6, rope_theta=10000.0,
                  attention_bias=False, use_sliding_window=False, tie_word_embeddings=False),
    "stablelm": dict(num_key_value_heads=32, hidden_act="silu", layer_norm_eps=1e-5, rope_theta=10000.0,
                     partial_rotary_factor=0.25, use_qkv_bias=False, qk_layernorm=False,
                     use_parallel_residual=False, tie_word_embeddings=False),
    "mixtral": dict(num_key_value_heads=8, head_dim=None, hidden_act="silu", rms_norm_eps=1e-5, rope_theta=1e6,
                    sliding_window=None, num_local_experts=8, num_experts_per_tok=2, tie_word_embeddings=False),
    "qwen3_moe": dict(num_key_value_heads=4, head_dim=None, hidden_act="silu", rms_norm_eps=1e-6,
                      rope_theta=10000.0, attention_bias=False, use_sliding_window=False, decoder_sparse_step=1,
                      moe_intermediate_size=768, num_experts_per_tok=8, num_experts=128, norm_topk_prob=False,
                      mlp_only_layers=None, tie_word_embeddings=False),
}
# Other names of a key (transformers 5.x writes Qwen3-MoE's num_experts as num_local_experts).
ALIASES = {"qwen3_moe": {"num_local_experts": "num_experts"}, "mixtral": {"num_experts": "num_local_experts"}}


def _refuse(option: str, why: str):
    raise InteropError(f"no exact transformers counterpart for {option}: {why}")


# --------------------------------------------------------------------------- export: MyLM -> HF


def choose(m: ModelConfig) -> str:
    """The model_type whose transformers model computes what `m` computes; InteropError names
    the first option of `m` that no mapped architecture has."""
    if m.attn_gate != "none":
        _refuse(f"model.attn_gate={m.attn_gate}", "no transformers architecture has this gate on plain "
                "attention (Qwen3-Next's elementwise gate comes with linear-attention layers and zero-centred norms)")
    if m.position != "rope":
        if (m.norm, m.mlp) != ("layernorm", "gelu"):
            _refuse(f"model.position={m.position} with model.norm={m.norm}, model.mlp={m.mlp}",
                    "GPT-2, the architecture with learned positions, has LayerNorm and a GELU MLP")
        if m.n_experts:
            _refuse(f"model.n_experts={m.n_experts} with model.position={m.position}",
                    "GPT-2 has no mixture of experts")
        if m.kv_heads != m.n_heads:
            _refuse(f"model.n_kv_heads={m.kv_heads} with model.position={m.position}",
                    "GPT-2 has no grouped-query attention")
        if m.qk_norm:
            _refuse(f"model.qk_norm=true with model.position={m.position}", "GPT-2 has no QK-norm")
        return "gpt2"
    if m.mlp != "swiglu":
        _refuse("model.mlp=gelu with model.position=rope", "the RoPE architectures mapped (Llama, Qwen3, "
                "StableLM, Mixtral, Qwen3-MoE) have SwiGLU MLPs")
    if m.norm == "layernorm":
        if m.n_experts:
            _refuse(f"model.n_experts={m.n_experts} with model.norm=layernorm",
                    "the MoE architectures mapped (Mixtral, Qwen3-MoE) use RMSNorm")
        if m.bias:
            _refuse("model.bias=true with model.norm=layernorm and RoPE",
                    "StableLM has no biases on o_proj and the MLP")
        return "stablelm"
    if not m.n_experts:
        if m.qk_norm and m.bias:
            _refuse("model.bias=true with model.qk_norm=true", "Qwen3 has no MLP biases")
        return "qwen3" if m.qk_norm else "llama"
    if m.n_shared_experts:
        _refuse(f"model.n_shared_experts={m.n_shared_experts}", "no transformers MoE has ungated shared "
                "experts beside a softmax top-k router (Qwen2-MoE multiplies its shared expert by a sigmoid gate)")
    if m.bias:
        _refuse("model.bias=true with model.n_experts", "Mixtral and Qwen3-MoE have no biases")
    if m.qk_norm:
        return "qwen3_moe"
    if not m.router_renormalize:
        _refuse("model.router_renormalize=false without model.qk_norm", "Mixtral always renormalises the "
                "top-k weights (Qwen3-MoE, which need not, has QK-norm)")
    if m.moe_layers is not None and sorted(set(m.moe_layers)) != list(range(m.n_layers)):
        _refuse(f"model.moe_layers={list(m.moe_layers)} without model.qk_norm", "every Mixtral layer is a "
                "MoE layer (Qwen3-MoE, which has dense layers, has QK-norm)")
    return "mixtral"


def hf_config(m: ModelConfig, arch: str, token_ids: dict, dtype: str) -> dict:
    """config.json for a model of `arch` computing what `m` computes. token_ids: the
    bos_token_id / eos_token_id / pad_token_id the tokenizer has."""
    D, L, H = m.d_model, m.n_layers, m.n_heads
    out = {"architectures": [ARCHITECTURES[arch]], "model_type": arch, "vocab_size": m.vocab_size,
           "tie_word_embeddings": m.tie_embeddings, "dtype": dtype, **token_ids, "use_cache": True}
    if arch == "gpt2":  # no dropout: MyLM has none, and fine-tuning in transformers should see the same model
        return {**out, "n_embd": D, "n_layer": L, "n_head": H, "n_positions": m.max_seq_len, "n_inner": m.ffn_dim,
                "activation_function": "gelu", "layer_norm_epsilon": m.norm_eps, "scale_attn_weights": True,
                "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    rope = {"rope_type": "default", "rope_theta": m.rope_theta}
    out.update(hidden_size=D, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=m.kv_heads,
               head_dim=m.head_dim, intermediate_size=m.ffn_dim, hidden_act="silu",
               max_position_embeddings=m.max_seq_len, rope_theta=m.rope_theta, rope_parameters=rope,
               attention_dropout=0.0)
    if arch == "stablelm":
        out["rope_parameters"] = {**rope, "partial_rotary_factor": 1.0}
        return {**out, "layer_norm_eps": m.norm_eps, "partial_rotary_factor": 1.0, "use_qkv_bias": False,
                "qk_layernorm": m.qk_norm, "use_parallel_residual": False, "hidden_dropout": 0.0}
    out["rms_norm_eps"] = m.norm_eps
    if arch == "llama":
        return {**out, "attention_bias": m.bias, "mlp_bias": m.bias, "pretraining_tp": 1}
    if arch == "mixtral":
        return {**out, "intermediate_size": m.expert_dim, "num_local_experts": m.n_experts,
                "num_experts_per_tok": m.top_k, "sliding_window": None, "router_jitter_noise": 0.0}
    out.update(attention_bias=False, use_sliding_window=False, sliding_window=None, max_window_layers=L,
               layer_types=["full_attention"] * L)
    if arch == "qwen3":
        return out
    return {**out, "num_experts": m.n_experts, "num_experts_per_tok": m.top_k, "moe_intermediate_size": m.expert_dim,
            "norm_topk_prob": m.router_renormalize, "decoder_sparse_step": 1,
            "mlp_only_layers": [i for i in range(L) if not m.is_moe_layer(i)]}


# --------------------------------------------------------------------------- import: HF -> MyLM


def model_config(values: dict, where: str) -> tuple[str, ModelConfig]:
    """(model_type, ModelConfig) of a transformers config.json; InteropError names what MyLM
    cannot compute exactly (a tanh GELU, scaled RoPE, a sliding window, ...)."""
    arch = values.get("model_type")
    if arch not in ARCHITECTURES:
        raise InteropError(f"{where}: model_type {arch!r} is not one MyLM reads "
                           f"({', '.join(ARCHITECTURES)})")
    values = {**{key: values[alias] for alias, key in ALIASES.get(arch, {}).items() if alias in values}, **values}
    v = {**DEFAULTS[arch], **values}

    def need(ok: bool, text: str) -> None:
        if not ok:
            raise InteropError(f"{where}: {text}")

    def get(key: str):
        need(v.get(key) is not None, f"no {key!r}")
        return v[key]

    try:
        if arch == "gpt2":
            act = v["activation_function"]
            need(act == "gelu", f"activation_function={act}: MyLM's GELU is the exact (erf) one, transformers' "
                                "'gelu'; a checkpoint trained with the tanh approximation would compute otherwise")
            need(v["scale_attn_weights"] and not v["scale_attn_by_inverse_layer_idx"],
                 "attention scaled other than by 1/sqrt(head_dim) (scale_attn_weights / "
                 "scale_attn_by_inverse_layer_idx)")
            need(not v["add_cross_attention"], "add_cross_attention=true: MyLM has no cross-attention")
            D = get("n_embd")
            return arch, ModelConfig(
                vocab_size=get("vocab_size"), max_seq_len=get("n_positions"), d_model=D, n_layers=get("n_layer"),
                n_heads=get("n_head"), d_ff=v["n_inner"] or 4 * D, position="learned", norm="layernorm",
                norm_eps=v["layer_norm_epsilon"], mlp="gelu", bias=True, tie_embeddings=v["tie_word_embeddings"])
        return arch, _rope_model_config(arch, v, need, get)
    except ConfigError as e:
        if isinstance(e, InteropError):
            raise
        raise InteropError(f"{where}: not a model MyLM can build ({e})") from None


def _rope_theta(v: dict, need) -> float:
    """rope_theta from a 5.x config (rope_parameters) or a 4.x one (rope_theta, rope_scaling)."""
    params = v.get("rope_parameters") or {}
    for name, spec in (("rope_parameters", params), ("rope_scaling", v.get("rope_scaling") or {})):
        kind = spec.get("rope_type", spec.get("type", "default"))
        need(kind == "default", f"{name} type {kind!r}: MyLM's RoPE has no scaling")
    return float(params.get("rope_theta", v["rope_theta"]))


def _rope_model_config(arch: str, v: dict, need, get) -> ModelConfig:
    D, H = get("hidden_size"), get("num_attention_heads")
    need(v["hidden_act"] == "silu", f"hidden_act={v['hidden_act']}: MyLM's SwiGLU gates with silu")
    head_dim = v.get("head_dim") or D // H
    need(head_dim * H == D, f"head_dim={head_dim} with {H} heads of hidden_size={D}: MyLM's heads split d_model")
    kv = v["num_key_value_heads"] or H
    common = dict(vocab_size=get("vocab_size"), max_seq_len=get("max_position_embeddings"), d_model=D,
                  n_layers=get("num_hidden_layers"), n_heads=H, n_kv_heads=None if kv == H else kv,
                  position="rope", rope_theta=_rope_theta(v, need), mlp="swiglu",
                  tie_embeddings=v["tie_word_embeddings"])
    if arch == "stablelm":
        factor = (v.get("rope_parameters") or {}).get("partial_rotary_factor", v["partial_rotary_factor"])
        need(factor == 1, f"partial_rotary_factor={factor}: MyLM rotates every dimension of a head")
        need(not v["use_qkv_bias"], "use_qkv_bias=true: MyLM's biases (model.bias) sit on every linear layer")
        need(not v["use_parallel_residual"], "use_parallel_residual=true: MyLM's blocks are sequential")
        return ModelConfig(**common, d_ff=get("intermediate_size"), norm="layernorm", norm_eps=v["layer_norm_eps"],
                           bias=False, qk_norm=bool(v["qk_layernorm"]))
    common.update(norm="rmsnorm", norm_eps=v["rms_norm_eps"])
    if arch in ("qwen3", "qwen3_moe"):
        need(not v["attention_bias"], "attention_bias=true: Qwen3's MLP has no biases, MyLM's model.bias has")
        need(not v["use_sliding_window"], "use_sliding_window=true: MyLM's attention sees the whole context")
        need(set(v.get("layer_types") or ["full_attention"]) == {"full_attention"},
             "layer_types other than full_attention: MyLM's attention sees the whole context")
        common["qk_norm"] = True
    if arch == "llama":
        need(v["attention_bias"] == v["mlp_bias"],
             "attention_bias != mlp_bias: MyLM's model.bias puts biases on every linear layer or none")
        return ModelConfig(**common, d_ff=get("intermediate_size"), bias=bool(v["attention_bias"]))
    if arch == "qwen3":
        return ModelConfig(**common, d_ff=get("intermediate_size"), bias=False)
    if arch == "mixtral":
        need(v["sliding_window"] is None, "sliding_window is set: MyLM's attention sees the whole context")
        F = get("intermediate_size")
        return ModelConfig(**common, d_ff=F, bias=False, n_experts=v["num_local_experts"],
                           top_k=v["num_experts_per_tok"], moe_d_ff=F, router_renormalize=True)
    L, step = common["n_layers"], v["decoder_sparse_step"]
    dense = set(v["mlp_only_layers"] or ())
    moe = [i for i in range(L) if i not in dense and v["num_experts"] > 0 and (i + 1) % step == 0]
    if not moe:  # every layer dense: a Qwen3 model in a Qwen3-MoE config
        return ModelConfig(**common, d_ff=get("intermediate_size"), bias=False)
    return ModelConfig(**common, d_ff=get("intermediate_size"), bias=False, n_experts=v["num_experts"],
                       top_k=v["num_experts_per_tok"], moe_d_ff=v["moe_intermediate_size"],
                       moe_layers=None if len(moe) == L else tuple(moe),
                       router_renormalize=bool(v["norm_topk_prob"]))
