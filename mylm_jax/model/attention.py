"""Causal self-attention: multi-head / grouped-query, optional QK-norm, RoPE and output gate.

Shapes: B batch, T query length, S key length (= T here), H query heads, K kv heads,
G = H / K query heads sharing one kv head, d head dim, D model width, N = B*T.

Grouped-query attention (GQA) stores K < H key/value heads; query head h reads kv
head h // G. With K = H it is plain multi-head attention.

Gated attention (Qiu et al. 2025, "Gated Attention for Large Language Models",
position G1): y = attention(x) * sigmoid(x W_g) before the output projection,
where x is the block's normed input. The gate is one scalar per head ("headwise",
W_g: [D, H]) or one per element ("elementwise", W_g: [D, H, d]). It lets a head
output (close to) nothing, which removes attention sinks and massive activations.

Four implementations compute the same function (`model.attention_impl`):
  * "reference": the two einsums written out over the whole T x T square with an
    explicit mask: the definition, easiest to read;
  * "dot_product": `jax.nn.dot_product_attention` with XLA's implementation (the
    T x S scores written out by the compiler);
  * "cudnn": the same call with implementation="cudnn", cuDNN's fused flash attention
    (GPU only; bfloat16 inputs, head_dim a multiple of 8 up to 128). Its causal mask
    type skips the upper triangle; packed documents add the same-document mask, which
    jax turns into an additive bias;
  * "blockwise": queries in blocks of `attention_block` rows; block i attends only to
    keys [0, end of block i), so the all-masked upper triangle is never computed
    (about half the work at many blocks) and each block's scores stay cache-sized.
    Exact: each query still sees all its keys in one softmax. Fastest on CPU.
  * "auto" (default), by platform (`choose_attention`): blockwise on CPU; cudnn on GPU
    when the config allows it, else dot_product; dot_product on TPU (a Pallas
    flash/splash kernel would be faster at long T, but none can be tested here, and at
    T <= 2048 XLA's fused attention is within reach of it).
A fallback from what was asked (cudnn on a CPU, float32 inputs on a GPU) is logged once.
All take the same boolean mask: causal AND same-document (`segment_ids`), so packed
documents never attend to one another.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mylm_jax.config import ModelConfig
from mylm_jax.model.layers import Dense, fused_dense, make_norm, rope

NEG_INF = -1e30  # finite, so a fully masked row cannot produce NaN
_log = logging.getLogger(__name__)
_logged: set[str] = set()


def platform() -> str:
    """The backend the model runs on ("cpu", "gpu", "tpu"); tests replace it to try the others."""
    return jax.default_backend()


def cudnn_unsupported(cfg: ModelConfig) -> str:
    """Why cuDNN's fused attention cannot run this config ("" when it can)."""
    if cfg.dtype != "bfloat16":
        return f"cuDNN flash attention needs bfloat16 inputs (model.dtype={cfg.dtype})"
    if cfg.head_dim % 8 or cfg.head_dim > 128:
        return f"cuDNN flash attention needs head_dim a multiple of 8 up to 128 (head_dim={cfg.head_dim})"
    return ""


def choose_attention(cfg: ModelConfig, on: str) -> tuple[str, str]:
    """(implementation, why it differs from the asked one or "") for model.attention_impl on
    platform `on`."""
    impl = cfg.attention_impl
    if impl == "auto":
        if on == "cpu":
            return "blockwise", ""
        if on != "gpu":  # TPU: XLA (see the module docstring)
            return "dot_product", ""
        why = cudnn_unsupported(cfg)
        return ("dot_product", f"attention_impl=auto on gpu: {why}; using dot_product (XLA)") if why \
            else ("cudnn", "")
    if impl == "cudnn":
        why = cudnn_unsupported(cfg) if on == "gpu" else f"it needs a GPU (platform: {on})"
        if why:
            return "dot_product", f"model.attention_impl=cudnn: {why}; using dot_product (XLA)"
    return impl, ""


def log_once(message: str) -> None:
    if message and message not in _logged:
        _logged.add(message)
        _log.warning(message)


def attention_mask(segment_ids_BT: jax.Array | None, B: int, T: int) -> jax.Array:
    """[B, T, S] boolean: query t may attend to key s iff s <= t and both are in one document."""
    causal_TS = jnp.tril(jnp.ones((T, T), dtype=bool))
    if segment_ids_BT is None:
        return jnp.broadcast_to(causal_TS, (B, T, T))
    same_doc_BTS = segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    return causal_TS & same_doc_BTS


def reference_attention(q_BTHd, k_BSKd, v_BSKd, mask_BTS, dtype) -> jax.Array:
    """softmax(q k^T / sqrt(d) + mask) v, with the kv head shared by G query heads."""
    B, T, H, d = q_BTHd.shape
    K = k_BSKd.shape[2]
    q_BTKGd = q_BTHd.reshape(B, T, K, H // K, d).astype(dtype)
    scores_BKGTS = jnp.einsum("btkgd,bskd->bkgts", q_BTKGd, k_BSKd.astype(dtype),
                              preferred_element_type=jnp.float32) / math.sqrt(d)
    scores_BKGTS = jnp.where(mask_BTS[:, None, None], scores_BKGTS, NEG_INF)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1)
    out_BTKGd = jnp.einsum("bkgts,bskd->btkgd", probs_BKGTS.astype(dtype), v_BSKd.astype(dtype),
                           preferred_element_type=jnp.float32)
    return out_BTKGd.reshape(B, T, H, d)


def blockwise_attention(q_BTHd, k_BSKd, v_BSKd, segment_ids_BT, dtype, block: int) -> jax.Array:
    """Causal attention computed one query block at a time, skipping keys after the block.

    Heads are moved next to the batch first ([B, K, G, T, d]) so every einsum is a
    batch of contiguous [rows, d] x [d, keys] matmuls, the layout XLA:CPU runs fastest.
    """
    B, T, H, d = q_BTHd.shape
    K = k_BSKd.shape[2]
    q_BKGTd = q_BTHd.reshape(B, T, K, H // K, d).transpose(0, 2, 3, 1, 4).astype(dtype)
    k_BKSd = k_BSKd.transpose(0, 2, 1, 3).astype(dtype)
    v_BKSd = v_BSKd.transpose(0, 2, 1, 3).astype(dtype)
    mask_BTS = attention_mask(segment_ids_BT, B, T)
    outs = []
    for start in range(0, T, block):
        end = min(start + block, T)  # queries [start, end) see keys [0, end)
        scores_BKGtS = jnp.einsum("bkgtd,bksd->bkgts", q_BKGTd[:, :, :, start:end], k_BKSd[:, :, :end],
                                  preferred_element_type=jnp.float32) / math.sqrt(d)
        scores_BKGtS = jnp.where(mask_BTS[:, None, None, start:end, :end], scores_BKGtS, NEG_INF)
        probs_BKGtS = jax.nn.softmax(scores_BKGtS, axis=-1).astype(dtype)
        outs.append(jnp.einsum("bkgts,bksd->bkgtd", probs_BKGtS, v_BKSd[:, :, :end],
                               preferred_element_type=jnp.float32))
    out_BKGTd = jnp.concatenate(outs, axis=3)
    return out_BKGTd.transpose(0, 3, 1, 2, 4).reshape(B, T, H, d)


def fast_attention(q_BTHd, k_BSKd, v_BSKd, segment_ids_BT, dtype, implementation: str | None = None) -> jax.Array:
    """`jax.nn.dot_product_attention` (implementation None: XLA, "cudnn": cuDNN).

    Without segment ids it uses `is_causal` only. With them, XLA gets the whole mask
    (causal AND same document); cuDNN gets `is_causal` (its causal mask type, which skips
    the upper triangle) plus the same-document mask [B, 1, T, S] (applied as a bias)."""
    q, k, v = (t.astype(dtype) for t in (q_BTHd, k_BSKd, v_BSKd))
    if segment_ids_BT is None:
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
    elif implementation == "cudnn":
        same_doc_B1TS = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])[:, None]
        out = jax.nn.dot_product_attention(q, k, v, mask=same_doc_B1TS, is_causal=True, implementation="cudnn")
    else:
        B, T = segment_ids_BT.shape
        mask_B1TS = attention_mask(segment_ids_BT, B, T)[:, None]
        out = jax.nn.dot_product_attention(q, k, v, mask=mask_B1TS)
    return out.astype(jnp.float32)


class KVCache(NamedTuple):
    """Decoding state: every layer's keys and values [B, S, K, d] for S cache slots, which
    slots hold real tokens (valid_BS: false for left padding and unwritten slots), and
    the next slot to write (the same for every row)."""

    keys: tuple  # per layer [B, S, K, d]
    values: tuple
    valid_BS: jax.Array
    index: jax.Array  # int32 scalar


def init_cache(cfg: ModelConfig, batch: int, slots: int) -> KVCache:
    shape = (batch, slots, cfg.kv_heads, cfg.head_dim)
    dtype = jnp.dtype(cfg.dtype)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers))
    return KVCache(zeros, zeros, jnp.zeros((batch, slots), bool), jnp.zeros([], jnp.int32))


def cached_attention(q_BTHd, k_BSKd, v_BSKd, valid_BS, index, dtype) -> jax.Array:
    """Queries written at slots index..index+T-1 attend to every valid slot up to their own."""
    S, T = k_BSKd.shape[1], q_BTHd.shape[1]
    causal_TS = jnp.arange(S)[None, :] <= (index + jnp.arange(T))[:, None]
    return reference_attention(q_BTHd, k_BSKd, v_BSKd, causal_TS[None] & valid_BS[:, None, :], dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        D, H, K, d = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.cfg = cfg
        self.q = Dense(cfg, (D,), (H, d), ("embed",), ("heads", "head_dim"), "hidden", rngs)
        # k and v share one kernel [D, 2, K, d]; at call time q, kv and the gate run as
        # one matmul (`fused_dense`).
        self.kv = Dense(cfg, (D,), (2, K, d), ("embed",), (None, "kv_heads", "head_dim"), "hidden", rngs)
        if cfg.qk_norm:
            self.q_norm = make_norm(cfg, d, "head_dim")
            self.k_norm = make_norm(cfg, d, "head_dim")
        gate_shape = {"headwise": (H,), "elementwise": (H, d)}.get(cfg.attn_gate)
        if gate_shape:
            self.gate = Dense(cfg, (D,), gate_shape, ("embed",), ("heads", "head_dim")[:len(gate_shape)],
                              "hidden", rngs)
        self.out = Dense(cfg, (H, d), (D,), ("heads", "head_dim"), ("embed",), "output", rngs)

    def _project(self, x_ND, B: int, T: int, positions_BT):
        """q [B, T, H, d], k and v [B, T, K, d] (QK-normed, rotated), and the gate's logits."""
        cfg = self.cfg
        H, K, d = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        gated = cfg.attn_gate != "none"
        q_NHd, kv_N2Kd, *gate_logits = fused_dense(x_ND, [self.q, self.kv] + ([self.gate] if gated else []))
        q_BTHd = q_NHd.reshape(B, T, H, d)
        k_BTKd = kv_N2Kd[:, 0].reshape(B, T, K, d)
        v_BTKd = kv_N2Kd[:, 1].reshape(B, T, K, d)
        if cfg.qk_norm:
            q_BTHd, k_BTKd = self.q_norm(q_BTHd), self.k_norm(k_BTKd)
        if cfg.position == "rope":
            q_BTHd = rope(q_BTHd, positions_BT, cfg.rope_theta)
            k_BTKd = rope(k_BTKd, positions_BT, cfg.rope_theta)
        return q_BTHd, k_BTKd, v_BTKd, gate_logits

    def _output(self, y_BTHd, gate_logits) -> jax.Array:
        """Gate (if any) and output projection of the heads' results -> [N, D]."""
        cfg = self.cfg
        B, T, H, d = y_BTHd.shape
        y_NHd = y_BTHd.reshape(B * T, H, d)
        if gate_logits:
            gate = jax.nn.sigmoid(gate_logits[0])  # [N, H] or [N, H, d]
            y_NHd = y_NHd * (gate[:, :, None] if cfg.attn_gate == "headwise" else gate)
        return self.out(y_NHd)

    def decode(self, x_ND, B: int, T: int, positions_BT, valid_BT, k_BSKd, v_BSKd, valid_BS, index):
        """T new tokens against the cache: writes their keys / values at slots index..index+T-1
        and returns (output [N, D], updated keys, values)."""
        q_BTHd, k_BTKd, v_BTKd, gate_logits = self._project(x_ND, B, T, positions_BT)
        k_BSKd = jax.lax.dynamic_update_slice(k_BSKd, k_BTKd.astype(k_BSKd.dtype), (0, index, 0, 0))
        v_BSKd = jax.lax.dynamic_update_slice(v_BSKd, v_BTKd.astype(v_BSKd.dtype), (0, index, 0, 0))
        y_BTHd = cached_attention(q_BTHd, k_BSKd, v_BSKd, valid_BS, index, jnp.dtype(self.cfg.dtype))
        return self._output(y_BTHd, gate_logits), k_BSKd, v_BSKd

    def __call__(self, x_ND: jax.Array, B: int, T: int, positions_BT: jax.Array,
                 segment_ids_BT: jax.Array | None) -> jax.Array:
        cfg = self.cfg
        q_BTHd, k_BTKd, v_BTKd, gate_logits = self._project(x_ND, B, T, positions_BT)
        dtype = jnp.dtype(cfg.dtype)
        impl, fallback = choose_attention(cfg, platform())
        log_once(fallback)
        if impl == "reference":
            y_BTHd = reference_attention(q_BTHd, k_BTKd, v_BTKd,
                                         attention_mask(segment_ids_BT, B, T), dtype)
        elif impl == "blockwise":
            y_BTHd = blockwise_attention(q_BTHd, k_BTKd, v_BTKd, segment_ids_BT, dtype, cfg.attention_block)
        else:
            y_BTHd = fast_attention(q_BTHd, k_BTKd, v_BTKd, segment_ids_BT, dtype,
                                    "cudnn" if impl == "cudnn" else None)
        return self._output(y_BTHd, gate_logits)
