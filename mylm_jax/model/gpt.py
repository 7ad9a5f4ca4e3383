"""The GPT model family: one pre-norm decoder, every variant chosen by `ModelConfig`.

    x = embed(tokens) (+ pos_embed(positions) when position == "learned")
    for each block:   x = x + attn(norm(x));   x = x + ffn(norm(x))      (ffn: MLP or MoE)
    logits = norm(x) @ W_head          (W_head = embed^T when tie_embeddings)

`GPT(cfg, rngs)(tokens, segment_ids=None, positions=None) -> (logits, aux)`:
    tokens, segment_ids, positions: int [B, T]
    logits: float32 [B, T, V]
    aux: {"losses": {name: scalar}, "metrics": {name: array}}, the extra loss terms and
         metrics the layers report (empty for a dense model). Each loss term is the mean
         over the layers that report it, each metric their stack [n_layers_reporting, ...]:
         for MoE, losses `load_balance` and `router_z`, metric `expert_load` [n_moe_layers, E].
         The trainer weights the terms by the `loss` config section without knowing
         what they are (mylm_jax/train/loss.py).
segment_ids mark documents packed into one row (attention never crosses them; 0 is
padding); positions restart at 0 in each document. Both default to one document.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mylm_jax.config import ModelConfig
from mylm_jax.model.attention import Attention, KVCache
from mylm_jax.model.init import initializer
from mylm_jax.model.layers import MLP, make_norm, matmul, param
from mylm_jax.model.moe import MoE
from mylm_jax.model.stack import build_stack, run_layers


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
        self.attn_norm = make_norm(cfg, cfg.d_model)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = make_norm(cfg, cfg.d_model)
        self.is_moe = cfg.is_moe_layer(layer)
        self.mlp = MoE(cfg, rngs) if self.is_moe else MLP(cfg, cfg.ffn_dim, rngs)

    def __call__(self, x_ND, B, T, positions_BT, segment_ids_BT):
        x_ND = x_ND + self.attn(self.attn_norm(x_ND), B, T, positions_BT, segment_ids_BT)
        valid_N = None if segment_ids_BT is None else segment_ids_BT.reshape(-1) != 0
        return self._feed_forward(x_ND, valid_N)

    def _feed_forward(self, x_ND, valid_N):
        h_ND = self.mlp_norm(x_ND)
        if self.is_moe:
            y_ND, aux = self.mlp(h_ND, valid_N)
        else:
            y_ND, aux = self.mlp(h_ND), None
        return x_ND + y_ND, aux

    def decode(self, x_ND, B, T, positions_BT, valid_BT, k_BSKd, v_BSKd, valid_BS, index):
        y_ND, k_BSKd, v_BSKd = self.attn.decode(self.attn_norm(x_ND), B, T, positions_BT, valid_BT,
                                                k_BSKd, v_BSKd, valid_BS, index)
        x_ND, _ = self._feed_forward(x_ND + y_ND, valid_BT.reshape(-1))
        return x_ND, k_BSKd, v_BSKd


class GPT(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        V, D = cfg.vocab_size, cfg.d_model
        self.cfg = cfg
        self.embed = param(rngs, initializer(cfg, "embed"), (V, D), ("vocab", "embed"))
        if cfg.position == "learned":
            self.pos_embed = param(rngs, initializer(cfg, "embed"), (cfg.max_seq_len, D), (None, "embed"))
        # The layer stack (mylm_jax/model/stack.py): `blocks` [layer] unrolled, or `stack`
        # [segment][position] with every weight stacked over the segment's repeats.
        if cfg.scan_layers:
            self.stack = build_stack(cfg, lambda i: Block(cfg, i, rngs))
        else:
            self.blocks = nnx.List([Block(cfg, i, rngs) for i in range(cfg.n_layers)])
        self.final_norm = make_norm(cfg, D)
        if not cfg.tie_embeddings:
            self.lm_head = param(rngs, initializer(cfg, "head", D, V), (D, V), ("embed", "vocab"))

    def __call__(self, tokens_BT: jax.Array, segment_ids_BT: jax.Array | None = None,
                 positions_BT: jax.Array | None = None):
        B, T = tokens_BT.shape
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
        x_ND = self._embed(tokens_BT, positions_BT)
        x_ND, layer_aux = run_layers(self.cfg, self, x_ND,
                                     lambda block, x_ND: block(x_ND, B, T, positions_BT, segment_ids_BT))
        return self._logits(x_ND, B, T), merge_aux([aux for aux in layer_aux if aux is not None])

    def _embed(self, tokens_BT, positions_BT):
        x_ND = self.embed[...][tokens_BT.reshape(-1)]
        if self.cfg.position == "learned":
            x_ND = x_ND + self.pos_embed[...][positions_BT.reshape(-1)]
        return x_ND

    def decode(self, tokens_BT, positions_BT, valid_BT, cache: KVCache):
        """Generation: the logits [B, T, V] of T new tokens given the cached ones, and the
        updated cache (mylm_jax/generate.py). valid_BT marks real tokens (false: left padding)."""
        B, T = tokens_BT.shape
        index = cache.index
        valid_BS = jax.lax.dynamic_update_slice(cache.valid_BS, valid_BT, (0, index))
        x_ND = self._embed(tokens_BT, positions_BT)

        def layer(block, x_ND, k_BSKd, v_BSKd):
            x_ND, k_BSKd, v_BSKd = block.decode(x_ND, B, T, positions_BT, valid_BT, k_BSKd, v_BSKd, valid_BS, index)
            return x_ND, (k_BSKd, v_BSKd)

        # Every layer's (keys, values); a scanned stack scans them with its weights.
        x_ND, kv = run_layers(self.cfg, self, x_ND, layer, list(zip(cache.keys, cache.values)), remat=False)
        keys, values = zip(*kv)
        return self._logits(x_ND, B, T), KVCache(tuple(keys), tuple(values), valid_BS, index + T)

    def _logits(self, x_ND, B, T):
        cfg = self.cfg
        h_ND = self.final_norm(x_ND)
        dtype = jnp.dtype(cfg.dtype)
        if cfg.tie_embeddings:
            # The barrier keeps embed^T a real [D, V] array. Without it XLA folds the
            # transpose into the matmul and the backward computes dlogits^T @ h, a
            # [V, N] x [N, D] product XLA:CPU runs at about half speed; with it, the
            # backward is h^T @ dlogits (fast) plus a cheap [D, V] transpose.
            head_DV = jax.lax.optimization_barrier(self.embed[...].T)
        else:
            head_DV = self.lm_head[...]
        return matmul(h_ND, head_DV, dtype).reshape(B, T, cfg.vocab_size)


def merge_aux(per_layer: list[dict]) -> dict:
    """The layers' {"losses", "metrics"} as one: each loss averaged over the layers that
    report it, each metric stacked along a new first axis."""
    merged = {"losses": {}, "metrics": {}}
    for kind, combine in (("losses", lambda xs: jnp.mean(jnp.stack(xs))), ("metrics", jnp.stack)):
        names = dict.fromkeys(name for aux in per_layer for name in aux[kind])
        merged[kind] = {name: combine([aux[kind][name] for aux in per_layer if name in aux[kind]])
                        for name in names}
    return merged
