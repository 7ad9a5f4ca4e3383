"""Weight conversion between the JAX model's flat params and the twin's state_dict.

The neutral format on the JAX side is `mylm_jax.model.params.flat_params(model)`:
`{"blocks.0.attn.q.kernel": np.ndarray [D, H, d], ...}`. Names mirror each other
(JAX `kernel` -> torch `weight`, norm `scale` -> `weight`, a bare parameter such as
`embed` -> `embed.weight`), and only layouts change:

    JAX (kernel = in_shape + out_shape)      torch ([out, in])              rule
    embed [V, D], pos_embed [Tmax, D]        .weight, same shape            copy
    q.kernel [D, H, d]                       q.weight [H*d, D]              linear
    kv.kernel [D, 2, K, d]                   kv.weight [2*K*d, D]           linear
    gate.kernel [D, H] or [D, H, d]          gate.weight [H or H*d, D]      linear
    out.kernel [H, d, D]                     out.weight [D, H*d]            linear
    fc.kernel [D, F], proj.kernel [F, D]     .weight [F, D], [D, F]         linear
    gate_up.kernel [D, 2, F]                 gate_up.weight [2F, D]         linear
    router [D, E], lm_head [D, V]            .weight [E, D], [V, D]         linear
    w_in [E, D, F] or [E, D, 2, F]           w_in [E, F or 2F, D]           experts
    w_out [E, F, D]                          w_out [E, D, F]                experts
    any bias [*out_shape]                    bias [prod(out_shape)]         flat
    norm scale [n], bias [n]                 weight [n], bias [n]           copy

"linear": reshape the kernel to 2-D [prod(in), prod(out)] and transpose.
"experts": per expert the same, i.e. [E, in, out] -> [E, out, in].
Every rule is a reshape or a transpose, so a round trip is exact (bitwise).

This module imports no jax. The table of expected names and shapes is derived from
the config alone, so a missing or unexpected key, or a wrong shape, is a ValueError
that names it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mylm_jax.config import ModelConfig

Rule = Literal["copy", "linear", "experts", "flat"]


@dataclass(frozen=True)
class Entry:
    torch_name: str
    jax_shape: tuple[int, ...]
    rule: Rule
    n_in: int = 1  # "linear": how many leading kernel dims are the input

    @property
    def torch_shape(self) -> tuple[int, ...]:
        s = self.jax_shape
        if self.rule == "linear":
            return (math.prod(s[self.n_in:]), math.prod(s[:self.n_in]))
        if self.rule == "experts":
            return (s[0], math.prod(s[2:]), s[1])
        if self.rule == "flat":
            return (math.prod(s),)
        return s

    def to_torch(self, a: np.ndarray) -> np.ndarray:
        s = self.jax_shape
        if self.rule == "linear":
            return a.reshape(math.prod(s[:self.n_in]), -1).T
        if self.rule == "experts":
            return a.reshape(s[0], s[1], -1).transpose(0, 2, 1)
        return a.reshape(self.torch_shape)

    def to_jax(self, a: np.ndarray) -> np.ndarray:
        if self.rule == "linear":
            return a.T.reshape(self.jax_shape)
        if self.rule == "experts":
            return a.transpose(0, 2, 1).reshape(self.jax_shape)
        return a.reshape(self.jax_shape)


def _dense(table: dict, name: str, cfg: ModelConfig, in_shape: tuple, out_shape: tuple,
           bias: bool | None = None):
    table[f"{name}.kernel"] = Entry(f"{name}.weight", in_shape + out_shape, "linear", len(in_shape))
    if cfg.bias if bias is None else bias:
        table[f"{name}.bias"] = Entry(f"{name}.bias", out_shape, "flat")


def _norm(table: dict, name: str, cfg: ModelConfig, dim: int):
    table[f"{name}.scale"] = Entry(f"{name}.weight", (dim,), "copy")
    if cfg.norm == "layernorm" and cfg.bias:
        table[f"{name}.bias"] = Entry(f"{name}.bias", (dim,), "copy")


def _mlp(table: dict, name: str, cfg: ModelConfig, hidden: int):
    D = cfg.d_model
    if cfg.mlp == "swiglu":
        _dense(table, f"{name}.gate_up", cfg, (D,), (2, hidden))
    else:
        _dense(table, f"{name}.fc", cfg, (D,), (hidden,))
    _dense(table, f"{name}.proj", cfg, (hidden,), (D,))


def param_layout(cfg: ModelConfig) -> dict[str, Entry]:
    """JAX name -> (torch name, JAX shape, rule) for every parameter the config creates."""
    V, D, H, K, d = cfg.vocab_size, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    table: dict[str, Entry] = {"embed": Entry("embed.weight", (V, D), "copy")}
    if cfg.position == "learned":
        table["pos_embed"] = Entry("pos_embed.weight", (cfg.max_seq_len, D), "copy")
    for i in range(cfg.n_layers):
        b = f"blocks.{i}"
        _norm(table, f"{b}.attn_norm", cfg, D)
        _dense(table, f"{b}.attn.q", cfg, (D,), (H, d))
        _dense(table, f"{b}.attn.kv", cfg, (D,), (2, K, d))
        if cfg.qk_norm:
            _norm(table, f"{b}.attn.q_norm", cfg, d)
            _norm(table, f"{b}.attn.k_norm", cfg, d)
        if cfg.attn_gate != "none":
            _dense(table, f"{b}.attn.gate", cfg, (D,), (H,) if cfg.attn_gate == "headwise" else (H, d))
        _dense(table, f"{b}.attn.out", cfg, (H, d), (D,))
        _norm(table, f"{b}.mlp_norm", cfg, D)
        if cfg.is_moe_layer(i):
            E, F = cfg.n_experts, cfg.expert_dim
            table[f"{b}.mlp.router"] = Entry(f"{b}.mlp.router.weight", (D, E), "linear")
            w_in_shape = (E, D, 2, F) if cfg.mlp == "swiglu" else (E, D, F)
            table[f"{b}.mlp.w_in"] = Entry(f"{b}.mlp.w_in", w_in_shape, "experts")
            table[f"{b}.mlp.w_out"] = Entry(f"{b}.mlp.w_out", (E, F, D), "experts")
            if cfg.n_shared_experts:
                _mlp(table, f"{b}.mlp.shared", cfg, cfg.n_shared_experts * F)
        else:
            _mlp(table, f"{b}.mlp", cfg, cfg.ffn_dim)
    _norm(table, "final_norm", cfg, D)
    if not cfg.tie_embeddings:
        table["lm_head"] = Entry("lm_head.weight", (D, V), "linear")
    return table


def _sub_layout(cfg: ModelConfig, prefix: str) -> dict[str, Entry]:
    """The layout of one submodule (e.g. prefix "blocks.0.attn"), names relative to it."""
    table = param_layout(cfg)
    if not prefix:
        return table
    cut = len(prefix) + 1
    sub = {name[cut:]: Entry(e.torch_name[cut:], e.jax_shape, e.rule, e.n_in)
           for name, e in table.items() if name.startswith(prefix + ".")}
    if not sub:
        raise ValueError(f"no parameters under '{prefix}' for this config")
    return sub


def _check_names(given, expected, side: str):
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if missing:
        raise ValueError(f"{side} params: missing key '{missing[0]}'"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        raise ValueError(f"{side} params: unexpected key '{unexpected[0]}'"
                         + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))


def jax_to_torch(flat: dict[str, np.ndarray], cfg: ModelConfig, prefix: str = "") -> dict[str, torch.Tensor]:
    """JAX flat params -> a state_dict for `mylm_torch.model.GPT(cfg)` (dtype kept).

    prefix: convert only one submodule (e.g. "blocks.0.attn"); names in and out are then
    relative to it, ready for that torch submodule's load_state_dict.
    """
    layout = _sub_layout(cfg, prefix)
    _check_names(flat, layout, "JAX")
    state = {}
    for name, entry in layout.items():
        a = np.asarray(flat[name])
        if a.shape != entry.jax_shape:
            raise ValueError(f"JAX param '{name}': shape {a.shape}, config expects {entry.jax_shape}")
        state[entry.torch_name] = torch.tensor(np.ascontiguousarray(entry.to_torch(a)))
    return state


def torch_to_jax(state_dict: dict[str, torch.Tensor], cfg: ModelConfig,
                 prefix: str = "") -> dict[str, np.ndarray]:
    """A twin's state_dict (or a dict of its grads) -> JAX flat params (numpy, dtype kept)."""
    layout = _sub_layout(cfg, prefix)
    by_torch_name = {e.torch_name: (name, e) for name, e in layout.items()}
    _check_names(state_dict, by_torch_name, "torch")
    flat = {}
    for torch_name, (name, entry) in by_torch_name.items():
        t = state_dict[torch_name]
        if tuple(t.shape) != entry.torch_shape:
            raise ValueError(f"torch param '{torch_name}': shape {tuple(t.shape)}, "
                             f"config expects {entry.torch_shape}")
        a = t.detach().cpu().numpy()
        flat[name] = np.array(entry.to_jax(a), order="C")  # a copy, not a view of the tensor
    return flat
