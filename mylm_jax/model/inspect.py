"""Looking inside a trained model: the attention weights of one layer.

    attention_weights(model, tokens, layer) -> [H, T, T]

Row t of head h is the softmax over keys s <= t that the layer's attention applies to
the values, for one unpacked sequence (one document; positions 0..T-1):

    x      = the residual stream entering block `layer` (embeddings, then blocks 0..layer-1)
    h      = attn_norm(x)
    q, k   = h W_q, h W_k                 (then QK-norm when model.qk_norm, RoPE when position == rope)
    p[h]   = softmax(q_h k_{h//G}^T / sqrt(d) + causal mask)       G = H / K query heads per kv head

The same parts the model calls (its Dense layers, norms and `layers.rope`), in the
order `Attention` calls them; tests/test_model_inspect.py checks that p @ v through the
output projection gives the model's own attention output. (Gated attention scales each
head's result after this average: the gate is not part of the weights.) For notebooks
(notebooks/validate.ipynb): one jitted call per layer and prompt length.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from mylm_jax.model.attention import NEG_INF, attention_mask
from mylm_jax.model.layers import fused_dense, rope
from mylm_jax.model.stack import layer_block


def residual_stream(model, tokens_T, layer: int) -> jax.Array:
    """[T, D]: the input of block `layer` for one sequence (the embedding at layer 0)."""
    tokens_BT = jnp.asarray(tokens_T, jnp.int32)[None]
    B, T = tokens_BT.shape
    positions_BT = jnp.arange(T)[None]
    x_ND = model.embed[...][tokens_BT.reshape(-1)]
    if model.cfg.position == "learned":
        x_ND = x_ND + model.pos_embed[...][positions_BT.reshape(-1)]
    for i in range(layer):  # either layout (model.scan_layers): block i's weights
        x_ND, _ = layer_block(model, i)(x_ND, B, T, positions_BT, None)
    return x_ND


def queries_keys(attn, h_ND, T: int):
    """q [1, T, H, d] and k [1, T, K, d] of one sequence, QK-normed and rotated as the layer does."""
    cfg = attn.cfg
    H, K, d = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    q_NHd, kv_N2Kd = fused_dense(h_ND, [attn.q, attn.kv])
    q_BTHd = q_NHd.reshape(1, T, H, d)
    k_BTKd = kv_N2Kd[:, 0].reshape(1, T, K, d)
    if cfg.qk_norm:
        q_BTHd, k_BTKd = attn.q_norm(q_BTHd), attn.k_norm(k_BTKd)
    if cfg.position == "rope":
        positions_BT = jnp.arange(T)[None]
        q_BTHd = rope(q_BTHd, positions_BT, cfg.rope_theta)
        k_BTKd = rope(k_BTKd, positions_BT, cfg.rope_theta)
    return q_BTHd, k_BTKd


def attention_weights(model, tokens, layer: int) -> jax.Array:
    """float32 [H, T, T]: head h's attention of query t over keys s in block `layer`
    (rows sum to 1; zero above the diagonal). `tokens`: a sequence of T token ids."""
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} out of range: the model has {model.cfg.n_layers} layers")
    return jitted_attention_weights(model, jnp.asarray(tokens, jnp.int32), layer)


@partial(nnx.jit, static_argnums=2)
def jitted_attention_weights(model, tokens_T, layer: int) -> jax.Array:
    cfg = model.cfg
    block = layer_block(model, layer)
    x_ND = residual_stream(model, tokens_T, layer)
    T = x_ND.shape[0]
    q_BTHd, k_BTKd = queries_keys(block.attn, block.attn_norm(x_ND), T)
    H, K, d = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    dtype = jnp.dtype(cfg.dtype)
    q_TKGd = q_BTHd[0].reshape(T, K, H // K, d).astype(dtype)
    scores_KGTS = jnp.einsum("tkgd,skd->kgts", q_TKGd, k_BTKd[0].astype(dtype),
                             preferred_element_type=jnp.float32) / math.sqrt(d)
    mask_TS = attention_mask(None, 1, T)[0]
    scores_KGTS = jnp.where(mask_TS, scores_KGTS, NEG_INF)
    return jax.nn.softmax(scores_KGTS, axis=-1).reshape(H, T, T)
