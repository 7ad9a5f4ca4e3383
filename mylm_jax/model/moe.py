"""Mixture-of-experts feed-forward layer: router -> softmax -> top-k -> experts.

For each token x (N tokens, E routed experts, k chosen per token):

    p = softmax(x W_r)                        router probabilities, [N, E]
    top-k of p -> experts e_1..e_k with weights w_j = p_{e_j}
                  (divided by their sum when `router_renormalize`)
    y = sum_j w_j * Expert_{e_j}(x)  +  SharedExperts(x)

Dropless: every token reaches all k of its experts; there is no capacity factor.
Three implementations compute the same y (`model.moe_impl`):
  * "dense": every expert runs on every token and the non-chosen outputs get weight
    0. The simplest to read; E/k times the FLOPs.
  * "blocked" (default): the N*k token copies are sorted by expert, each expert's
    group is padded to whole blocks of rows, and one batched matmul multiplies each
    block by its expert's weights: about the FLOPs of k experts per token, with static
    shapes on every backend.
  * "ragged": the sorted groups go to `jax.lax.ragged_dot` (grouped-matmul kernels on
    TPU; on CPU it costs as much as "dense").

Auxiliary outputs (averaged over valid tokens; segment id 0 marks padding), in the
model's generic form {"losses": {...}, "metrics": {...}} (mylm_jax/model/gpt.py):
    f_i = fraction of tokens that chose expert i      (sum_i f_i = k)
    P_i = mean router probability of expert i         (sum_i P_i = 1)
    losses   load_balance = E * sum_i f_i P_i         (Switch Transformer; = k when uniform)
             router_z     = mean over tokens of logsumexp(x W_r)^2     (ST-MoE)
    metrics  expert_load  = f_i / k, the share of routed assignments each expert received
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mylm_jax.config import ModelConfig
from mylm_jax.model.init import initializer
from mylm_jax.model.layers import MLP, gelu, matmul, param


class MoE(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        D, E, F = cfg.d_model, cfg.n_experts, cfg.expert_dim
        self.cfg = cfg
        self.router = param(rngs, initializer(cfg, "hidden", D, E), (D, E), ("embed", None))
        # Stacked expert weights; SwiGLU experts hold gate and up as [E, D, 2, F].
        in_shape, in_axes = ((E, D, 2, F), ("expert", "embed", None, "mlp")) if cfg.mlp == "swiglu" \
            else ((E, D, F), ("expert", "embed", "mlp"))
        self.w_in = param(rngs, initializer(cfg, "hidden", D, F), in_shape, in_axes)
        self.w_out = param(rngs, initializer(cfg, "output", F, D), (E, F, D), ("expert", "mlp", "embed"))
        if cfg.n_shared_experts:
            self.shared = MLP(cfg, cfg.n_shared_experts * F, rngs)

    def _activation(self, h: jax.Array) -> jax.Array:
        """[..., F] or [..., 2F] (gate | up) -> [..., F]."""
        if self.cfg.mlp == "swiglu":
            gate, up = jnp.split(h, 2, axis=-1)
            return jax.nn.silu(gate) * up
        return gelu(h)

    def _experts_dense(self, x_ND, weights_NE):
        E, D = self.cfg.n_experts, self.cfg.d_model
        dtype = jnp.dtype(self.cfg.dtype)
        w_in_EDF = self.w_in[...].reshape(E, D, -1).astype(dtype)
        h_NEF = jnp.einsum("nd,edf->nef", x_ND.astype(dtype), w_in_EDF, preferred_element_type=jnp.float32)
        a_NEF = self._activation(h_NEF)
        y_NED = jnp.einsum("nef,efd->ned", a_NEF.astype(dtype), self.w_out[...].astype(dtype),
                           preferred_element_type=jnp.float32)
        return jnp.einsum("ne,ned->nd", weights_NE, y_NED)

    def _experts_ragged(self, x_ND, top_idx_Nk, top_w_Nk):
        cfg = self.cfg
        E, D, k = cfg.n_experts, cfg.d_model, cfg.top_k
        dtype = jnp.dtype(cfg.dtype)
        expert_M = top_idx_Nk.reshape(-1)  # M = N*k token copies, one per assignment
        order_M = jnp.argsort(expert_M, stable=True)  # group copies by expert
        token_M = order_M // k
        group_sizes_E = jnp.bincount(expert_M, length=E).astype(jnp.int32)
        xs_MD = x_ND[token_M].astype(dtype)
        h_MF = jax.lax.ragged_dot(xs_MD, self.w_in[...].reshape(E, D, -1).astype(dtype), group_sizes_E,
                                  preferred_element_type=jnp.float32)
        y_MD = jax.lax.ragged_dot(self._activation(h_MF).astype(dtype), self.w_out[...].astype(dtype),
                                  group_sizes_E, preferred_element_type=jnp.float32)
        y_MD = y_MD * top_w_Nk.reshape(-1)[order_M][:, None]
        return jnp.zeros_like(x_ND, dtype=jnp.float32).at[token_M].add(y_MD)

    def _experts_blocked(self, x_ND, top_idx_Nk, top_w_Nk):
        """Grouped matmul with static shapes: each expert's group padded to whole blocks.

        Copies sorted by expert are laid out so that every group starts on a multiple of
        `model.moe_block_rows` rows; each block then belongs to one expert, and one batched matmul
        multiplies every block by its expert's weights. At most E * (block - 1) padding
        rows are added, so the row count is bounded statically: R = M + E * (block - 1)
        rounded up to a whole block.
        """
        cfg = self.cfg
        E, D, k = cfg.n_experts, cfg.d_model, cfg.top_k
        dtype = jnp.dtype(cfg.dtype)
        expert_M = top_idx_Nk.reshape(-1)
        M = expert_M.shape[0]
        block = min(cfg.moe_block_rows, M)
        order_M = jnp.argsort(expert_M, stable=True)
        token_M, sorted_expert_M = order_M // k, expert_M[order_M]
        group_sizes_E = jnp.bincount(expert_M, length=E)
        padded_sizes_E = -(-group_sizes_E // block) * block
        group_start_E = jnp.cumsum(group_sizes_E) - group_sizes_E
        padded_end_E = jnp.cumsum(padded_sizes_E)
        # Row of each sorted copy in the padded layout: its group's padded start + rank in group.
        row_M = (padded_end_E - padded_sizes_E)[sorted_expert_M] + jnp.arange(M) - group_start_E[sorted_expert_M]
        n_blocks = -(-(M + E * (block - 1)) // block)
        xs_RD = jnp.zeros((n_blocks * block, D), dtype).at[row_M].set(x_ND[token_M].astype(dtype))
        # The expert of each block (blocks past the last group hold zeros; any expert will do).
        block_expert_B = jnp.minimum(jnp.searchsorted(padded_end_E, jnp.arange(n_blocks) * block, side="right"),
                                     E - 1)
        w_in_BDF = self.w_in[...].reshape(E, D, -1)[block_expert_B].astype(dtype)
        h_BbF = jnp.einsum("bnd,bdf->bnf", xs_RD.reshape(n_blocks, block, D), w_in_BDF,
                           preferred_element_type=jnp.float32)
        y_BbD = jnp.einsum("bnf,bfd->bnd", self._activation(h_BbF).astype(dtype),
                           self.w_out[...][block_expert_B].astype(dtype), preferred_element_type=jnp.float32)
        y_MD = y_BbD.reshape(-1, D)[row_M] * top_w_Nk.reshape(-1)[order_M][:, None]
        return jnp.zeros_like(x_ND, dtype=jnp.float32).at[token_M].add(y_MD)

    def __call__(self, x_ND: jax.Array, valid_N: jax.Array | None = None):
        cfg = self.cfg
        E, k = cfg.n_experts, cfg.top_k
        # The router runs in float32 whatever the compute dtype: routing decisions
        # are discrete, and small logit errors flip them.
        logits_NE = matmul(x_ND, self.router[...], jnp.float32)
        probs_NE = jax.nn.softmax(logits_NE, axis=-1)
        top_w_Nk, top_idx_Nk = jax.lax.top_k(probs_NE, k)
        if cfg.router_renormalize:
            top_w_Nk = top_w_Nk / top_w_Nk.sum(-1, keepdims=True)
        one_hot_NkE = jax.nn.one_hot(top_idx_Nk, E, dtype=jnp.float32)
        chosen_NE = one_hot_NkE.sum(1)  # 0/1 per expert

        if cfg.moe_impl == "ragged":
            y_ND = self._experts_ragged(x_ND, top_idx_Nk, top_w_Nk)
        elif cfg.moe_impl == "blocked":
            y_ND = self._experts_blocked(x_ND, top_idx_Nk, top_w_Nk)
        else:
            y_ND = self._experts_dense(x_ND, jnp.einsum("nk,nke->ne", top_w_Nk, one_hot_NkE))
        if cfg.n_shared_experts:
            y_ND = y_ND + self.shared(x_ND)

        valid_N = jnp.ones(x_ND.shape[0], jnp.float32) if valid_N is None else valid_N.astype(jnp.float32)
        n_valid = jnp.maximum(valid_N.sum(), 1.0)
        f_E = (chosen_NE * valid_N[:, None]).sum(0) / n_valid
        P_E = (probs_NE * valid_N[:, None]).sum(0) / n_valid
        z_N = jax.nn.logsumexp(logits_NE, axis=-1)
        aux = {
            "losses": {  # weighted by the `loss` config section's fields of the same names
                "load_balance": E * jnp.sum(f_E * P_E),
                "router_z": jnp.sum(jnp.square(z_N) * valid_N) / n_valid,
            },
            "metrics": {"expert_load": f_E / k},
        }
        return y_ND, aux
