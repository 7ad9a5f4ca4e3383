"""The tensor tables: each transformers tensor and the MyLM parameter (or part of one) it holds.

    links(arch, cfg)                  -> [Link, ...], one per HF tensor (GPT-2's c_attn: three)
    to_hf(arch, cfg, flat)            -> {HF name: float32 array}      (export)
    from_hf(arch, cfg, tensors, where)-> {MyLM name: float32 array}    (import; InteropError on a tensor
                                                                        MyLM cannot hold)

MyLM's flat names are mylm_jax.model.params.flat_params's ("blocks.0.attn.q.kernel"). Its
kernels are [in..., out...] (q: [D, H, d], out: [H, d, D]); torch's nn.Linear stores
[out, in], so a Llama-family matrix is the kernel viewed as 2-D [in, out] and transposed.
GPT-2's Conv1D stores [in, out]: the same 2-D view, no transpose. Parts:

    kv.kernel [D, 2, K, d]         [:, 0] is k, [:, 1] is v     (k_proj, v_proj; GPT-2: in c_attn)
    gate_up.kernel [D, 2, F]       [:, 0] is the silu gate, [:, 1] up   (gate_proj, up_proj)
    w_in [E, D, 2, F], w_out [E, F, D]   expert e: w_in[e, :, 0] gate, w_in[e, :, 1] up, w_out[e] down
    router [D, E], lm_head [D, V]   transposed, as any matrix

GPT-2's c_attn holds q | k | v side by side ([D, 3D] and its bias [3D]): three links,
each naming its columns. StableLM keeps one QK-norm per head (q_layernorm.norms.{h}):
MyLM's one scale, shared by the heads, is written to each, and an import requires them
equal. A link without a MyLM parameter is a tensor the transformers model has and this
MyLM model lacks: written as zeros, and an import requires it all zeros. Every rule is
a reshape, a transpose or a copy, so a round trip is bit-exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mylm_jax.config import ModelConfig
from mylm_jax.interop.errors import InteropError

# Buffers some checkpoints carry that are no parameters (GPT-2's causal masks, old rotary tables).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


@dataclass(frozen=True)
class Link:
    hf: str                        # the transformers tensor
    mylm: str | None               # the MyLM parameter; None: a tensor only HF has (zeros)
    index: tuple = ()              # the part of the MyLM parameter it holds, a numpy index
    n_in: int = 0                  # > 0: a matrix whose first n_in dims (of the part) are its input
    linear: bool = True            # a matrix stored [out, in] (nn.Linear), not [in, out] (Conv1D)
    cols: tuple[int, int] | None = None  # its columns of the HF tensor (last axis), when several links share it
    shape: tuple[int, ...] = ()    # the zeros' shape (mylm None)

    def to_hf(self, part: np.ndarray) -> np.ndarray:
        if self.n_in:
            matrix = part.reshape(math.prod(part.shape[:self.n_in]), -1)
            return matrix.T if self.linear else matrix
        return part.reshape(-1)

    def to_mylm(self, tensor: np.ndarray, part_shape: tuple[int, ...]) -> np.ndarray:
        if self.n_in and self.linear:
            tensor = tensor.T
        return tensor.reshape(part_shape)


# --------------------------------------------------------------------------- the tables


def _gpt2(m: ModelConfig) -> list[Link]:
    D, F = m.d_model, m.ffn_dim
    out = [Link("transformer.wte.weight", "embed", n_in=1, linear=False)]
    out.append(Link("transformer.wpe.weight", "pos_embed", n_in=1, linear=False) if m.position == "learned"
               else Link("transformer.wpe.weight", None, shape=(m.max_seq_len, D)))

    def norm(hf: str, mylm: str) -> list[Link]:
        bias = Link(f"{hf}.bias", f"{mylm}.bias") if m.bias else Link(f"{hf}.bias", None, shape=(D,))
        return [Link(f"{hf}.weight", f"{mylm}.scale"), bias]

    def conv(hf: str, mylm: str, width: int, n_in: int = 1) -> list[Link]:
        bias = Link(f"{hf}.bias", f"{mylm}.bias") if m.bias else Link(f"{hf}.bias", None, shape=(width,))
        return [Link(f"{hf}.weight", f"{mylm}.kernel", n_in=n_in, linear=False), bias]

    for i in range(m.n_layers):
        h, b = f"transformer.h.{i}", f"blocks.{i}"
        out += norm(f"{h}.ln_1", f"{b}.attn_norm")
        for j, (name, index) in enumerate((("q", ()), ("kv", (slice(None), 0)), ("kv", (slice(None), 1)))):
            cols = (j * D, (j + 1) * D)
            out.append(Link(f"{h}.attn.c_attn.weight", f"{b}.attn.{name}.kernel", index, 1, False, cols))
            out.append(Link(f"{h}.attn.c_attn.bias", f"{b}.attn.{name}.bias", index[1:], cols=cols) if m.bias
                       else Link(f"{h}.attn.c_attn.bias", None, cols=cols, shape=(D,)))
        out += conv(f"{h}.attn.c_proj", f"{b}.attn.out", D, n_in=2)
        out += norm(f"{h}.ln_2", f"{b}.mlp_norm")
        out += conv(f"{h}.mlp.c_fc", f"{b}.mlp.fc", F)
        out += conv(f"{h}.mlp.c_proj", f"{b}.mlp.proj", D)
    out += norm("transformer.ln_f", "final_norm")
    if not m.tie_embeddings:
        out.append(Link("lm_head.weight", "lm_head", n_in=1))
    return out


def _norm(hf: str, mylm: str, m: ModelConfig, layernorm_bias: bool) -> list[Link]:
    """A Llama-family norm: weight, and for StableLM's nn.LayerNorm a bias MyLM's bias-free LayerNorm lacks."""
    out = [Link(f"{hf}.weight", f"{mylm}.scale")]
    if layernorm_bias:
        out.append(Link(f"{hf}.bias", None, shape=(m.d_model,)))
    return out


def _attention(arch: str, m: ModelConfig, p: str, b: str) -> list[Link]:
    kv = f"{b}.attn.kv"
    out = [Link(f"{p}.q_proj.weight", f"{b}.attn.q.kernel", n_in=1),
           Link(f"{p}.k_proj.weight", f"{kv}.kernel", (slice(None), 0), n_in=1),
           Link(f"{p}.v_proj.weight", f"{kv}.kernel", (slice(None), 1), n_in=1),
           Link(f"{p}.o_proj.weight", f"{b}.attn.out.kernel", n_in=2)]
    if m.bias:  # Llama's attention_bias
        out += [Link(f"{p}.q_proj.bias", f"{b}.attn.q.bias"), Link(f"{p}.k_proj.bias", f"{kv}.bias", (0,)),
                Link(f"{p}.v_proj.bias", f"{kv}.bias", (1,)), Link(f"{p}.o_proj.bias", f"{b}.attn.out.bias")]
    if m.qk_norm and arch == "stablelm":  # one LayerNorm (weight only) per head
        out += [Link(f"{p}.q_layernorm.norms.{h}.weight", f"{b}.attn.q_norm.scale") for h in range(m.n_heads)]
        out += [Link(f"{p}.k_layernorm.norms.{h}.weight", f"{b}.attn.k_norm.scale") for h in range(m.kv_heads)]
    elif m.qk_norm:
        out += [Link(f"{p}.q_norm.weight", f"{b}.attn.q_norm.scale"),
                Link(f"{p}.k_norm.weight", f"{b}.attn.k_norm.scale")]
    return out


def _mlp(m: ModelConfig, p: str, b: str) -> list[Link]:
    out = [Link(f"{p}.gate_proj.weight", f"{b}.gate_up.kernel", (slice(None), 0), n_in=1),
           Link(f"{p}.up_proj.weight", f"{b}.gate_up.kernel", (slice(None), 1), n_in=1),
           Link(f"{p}.down_proj.weight", f"{b}.proj.kernel", n_in=1)]
    if m.bias:  # Llama's mlp_bias
        out += [Link(f"{p}.gate_proj.bias", f"{b}.gate_up.bias", (0,)),
                Link(f"{p}.up_proj.bias", f"{b}.gate_up.bias", (1,)), Link(f"{p}.down_proj.bias", f"{b}.proj.bias")]
    return out


def _experts(arch: str, m: ModelConfig, p: str, b: str) -> list[Link]:
    """Mixtral: block_sparse_moe.{gate, experts.e.w1 (gate) / w3 (up) / w2 (down)}; Qwen3-MoE:
    mlp.{gate, experts.e.gate_proj / up_proj / down_proj}. The router ("gate") is [E, D]."""
    names, p = (("w1", "w3", "w2"), f"{p}.block_sparse_moe") if arch == "mixtral" else \
        (("gate_proj", "up_proj", "down_proj"), f"{p}.mlp")
    out = [Link(f"{p}.gate.weight", f"{b}.mlp.router", n_in=1)]
    for e in range(m.n_experts):
        gate, up, down = (f"{p}.experts.{e}.{name}.weight" for name in names)
        out += [Link(gate, f"{b}.mlp.w_in", (e, slice(None), 0), n_in=1),
                Link(up, f"{b}.mlp.w_in", (e, slice(None), 1), n_in=1),
                Link(down, f"{b}.mlp.w_out", (e,), n_in=1)]
    return out


def _llama_family(arch: str, m: ModelConfig) -> list[Link]:
    layernorm_bias = arch == "stablelm"  # nn.LayerNorm with a bias; MyLM's StableLM-like models have none
    out = [Link("model.embed_tokens.weight", "embed", n_in=1, linear=False)]
    for i in range(m.n_layers):
        p, b = f"model.layers.{i}", f"blocks.{i}"
        out += _norm(f"{p}.input_layernorm", f"{b}.attn_norm", m, layernorm_bias)
        out += _attention(arch, m, f"{p}.self_attn", b)
        out += _norm(f"{p}.post_attention_layernorm", f"{b}.mlp_norm", m, layernorm_bias)
        out += _experts(arch, m, p, b) if m.is_moe_layer(i) else _mlp(m, f"{p}.mlp", f"{b}.mlp")
    out += _norm("model.norm", "final_norm", m, layernorm_bias)
    if not m.tie_embeddings:
        out.append(Link("lm_head.weight", "lm_head", n_in=1))
    return out


def links(arch: str, m: ModelConfig) -> list[Link]:
    """Every tensor of the transformers checkpoint of `arch` for model `m`, in file order."""
    return _gpt2(m) if arch == "gpt2" else _llama_family(arch, m)


# --------------------------------------------------------------------------- the conversions


def to_hf(arch: str, m: ModelConfig, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """MyLM's flat float32 parameters -> the transformers checkpoint's tensors (float32, contiguous)."""
    parts: dict[str, list[tuple[tuple | None, np.ndarray]]] = {}
    for link in links(arch, m):
        value = np.zeros(link.shape, np.float32) if link.mylm is None else link.to_hf(flat[link.mylm][link.index])
        parts.setdefault(link.hf, []).append((link.cols, value))
    out = {}
    for name, pieces in parts.items():
        if pieces[0][0] is None:
            out[name] = np.ascontiguousarray(pieces[0][1], np.float32)
        else:  # column blocks, in order
            out[name] = np.ascontiguousarray(np.concatenate([v for _, v in sorted(pieces, key=lambda p: p[0])],
                                                            axis=-1), np.float32)
    return out


def from_hf(arch: str, m: ModelConfig, tensors: dict[str, np.ndarray], shapes: dict[str, tuple],
            where: str) -> dict[str, np.ndarray]:
    """The checkpoint's tensors -> MyLM's flat float32 parameters (`shapes`: the MyLM model's).
    InteropError on a missing, unexpected or misshapen tensor, a tensor MyLM would have to drop
    (nonzero where MyLM has nothing), or per-head copies that differ."""
    flat = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
    seen: dict[tuple, str] = {}  # (MyLM name, index) -> the HF tensor that filled it
    table = links(arch, m)
    for link in table:
        if link.hf not in tensors:
            raise InteropError(f"{where}: no tensor {link.hf} (expected for this {arch} config)")
        tensor = tensors[link.hf]
        if link.cols is not None:
            tensor = tensor[..., link.cols[0]:link.cols[1]]
        if link.mylm is None:
            if np.any(tensor != 0):
                raise InteropError(f"{where}: {link.hf} is not all zeros, and the MyLM model has no such "
                                   "tensor (its LayerNorms have biases only with model.bias=true)")
            continue
        if link.mylm not in flat:
            raise InteropError(f"{where}: {link.hf} maps to {link.mylm}, which this MyLM model does not have")
        target = flat[link.mylm][link.index]
        expected = link.to_hf(target).shape
        if tuple(tensor.shape) != expected:
            raise InteropError(f"{where}: {link.hf} has shape {tuple(tensor.shape)}, expected {expected}")
        value = link.to_mylm(np.asarray(tensor, np.float32), target.shape)
        key = (link.mylm, repr(link.index))
        if key in seen and not np.array_equal(flat[link.mylm][link.index], value):
            raise InteropError(f"{where}: {link.hf} differs from {seen[key]}; MyLM shares one "
                               f"{link.mylm.rsplit('.', 2)[-2]} across heads")
        seen.setdefault(key, link.hf)
        flat[link.mylm][link.index] = value
    unexpected = sorted(set(tensors) - {link.hf for link in table} - {n for n in tensors if n.endswith(IGNORED_SUFFIXES)})
    if unexpected:
        raise InteropError(f"{where}: unexpected tensor {unexpected[0]}" +
                           (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    return flat

