"""Building blocks: parameters with logical axes, dense layers, norms, RoPE, the MLP.

Activations inside a block are kept flat, x_ND with N = B*T: XLA:CPU runs the
backward pass of a dense layer on 2-D input about 2.5x faster than on [B, T, D], and
the flat form is no worse on GPU/TPU. Matmul inputs are cast to the compute dtype
and accumulated in float32 (`preferred_element_type`), so bfloat16 compute never
accumulates in bfloat16.

Every parameter is an `nnx.Param` carrying logical axis names in its `out_sharding`
metadata (e.g. ("embed", "mlp")); `mylm_jax.parallel` maps those names to mesh axes.
`eager_sharding=False`: the model itself never places anything on a mesh.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mylm_jax.config import ModelConfig
from mylm_jax.model.fp8 import fp8_matmul
from mylm_jax.model.init import Initializer, Role, initializer

Axes = tuple[str | None, ...]


def param(rngs: nnx.Rngs, init: Initializer, shape: tuple[int, ...], axes: Axes) -> nnx.Param:
    """A float32 parameter with logical axis names, one per dimension."""
    assert len(axes) == len(shape), (shape, axes)
    return nnx.Param(init(rngs.params(), shape), out_sharding=axes, eager_sharding=False)


def ones_param(shape: tuple[int, ...], axes: Axes) -> nnx.Param:
    return nnx.Param(jnp.ones(shape, jnp.float32), out_sharding=axes, eager_sharding=False)


def zeros_param(shape: tuple[int, ...], axes: Axes) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, jnp.float32), out_sharding=axes, eager_sharding=False)


def matmul(x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """x @ w with inputs in the compute dtype and a float32 result."""
    return jnp.matmul(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def dense_matmul(x: jax.Array, w: jax.Array, dtype, fp8: bool) -> jax.Array:
    """A Dense layer's x @ w: `matmul`, or with model.fp8 the FP8 matmul (mylm_jax/model/fp8.py:
    e4m3 inputs, e5m2 gradients, per-tensor scales; float32 result either way)."""
    return fp8_matmul(x, w) if fp8 else matmul(x, w, dtype)


class Dense(nnx.Module):
    """y = x @ W (+ b) where W has shape in_shape + out_shape.

    A multi-dimensional kernel (e.g. q: [D, H, hd]) keeps the structure visible to
    sharding and to the weight converter; the matmul itself runs on the flattened
    2-D view [prod(in_shape), prod(out_shape)].
    """

    def __init__(self, cfg: ModelConfig, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 in_axes: Axes, out_axes: Axes, role: Role, rngs: nnx.Rngs, bias: bool | None = None):
        fan_in, fan_out = math.prod(in_shape), math.prod(out_shape)
        self.in_shape, self.out_shape = in_shape, out_shape
        self.dtype = jnp.dtype(cfg.dtype)
        self.fp8 = cfg.fp8
        self.kernel = param(rngs, initializer(cfg, role, fan_in, fan_out),
                            in_shape + out_shape, in_axes + out_axes)
        self.bias = zeros_param(out_shape, out_axes) if (cfg.bias if bias is None else bias) else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, *in_shape] -> [N, *out_shape]."""
        n = x.shape[0]
        w = self.kernel[...].reshape(math.prod(self.in_shape), -1)
        y = dense_matmul(x.reshape(n, -1), w, self.dtype, self.fp8)
        if self.bias is not None:
            y = y + self.bias[...].reshape(-1)
        return y.reshape((n,) + self.out_shape)


def fused_dense(x: jax.Array, layers: list[Dense]) -> list[jax.Array]:
    """Apply several Dense layers that read the same input with one matmul.

    The kernels are concatenated along their outputs ([D, sum of widths]), multiplied
    once, and the result split back: a wider matmul runs closer to peak than several
    narrow ones (q, kv and the attention gate: ~4% of a training step on CPU). The
    parameters keep their own shapes and logical axes.
    """
    n = x.shape[0]
    kernels = [layer.kernel[...].reshape(math.prod(layer.in_shape), -1) for layer in layers]
    y = dense_matmul(x.reshape(n, -1), jnp.concatenate(kernels, axis=1), layers[0].dtype, layers[0].fp8)
    if any(layer.bias is not None for layer in layers):
        y = y + jnp.concatenate([layer.bias[...].reshape(-1) if layer.bias is not None
                                 else jnp.zeros(k.shape[1], k.dtype) for layer, k in zip(layers, kernels)])
    splits = list(itertools.accumulate(k.shape[1] for k in kernels))[:-1]
    return [part.reshape((n,) + layer.out_shape) for part, layer in zip(jnp.split(y, splits, axis=1), layers)]


class LayerNorm(nnx.Module):
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, in float32."""

    def __init__(self, dim: int, eps: float, bias: bool, axis_name: str | None = "embed"):
        self.eps = eps
        self.scale = ones_param((dim,), (axis_name,))
        self.bias = zeros_param((dim,), (axis_name,)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)  # biased, as torch
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...]
        return y + self.bias[...] if self.bias is not None else y


class RMSNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * scale over the last axis, in float32 (no centring, no bias)."""

    def __init__(self, dim: int, eps: float, axis_name: str | None = "embed"):
        self.eps = eps
        self.scale = ones_param((dim,), (axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        return x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps) * self.scale[...]


def make_norm(cfg: ModelConfig, dim: int, axis_name: str | None = "embed") -> nnx.Module:
    if cfg.norm == "layernorm":
        return LayerNorm(dim, cfg.norm_eps, cfg.bias, axis_name)
    return RMSNorm(dim, cfg.norm_eps, axis_name)


def rope(x_BTHd: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding, "rotate half" layout (GPT-NeoX / Llama in HF).

    Dimension pairs (i, i + hd/2) are rotated by the angle pos * theta^(-2i/hd):
        [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]
    so q.k depends on positions only through their difference.
    """
    half = x_BTHd.shape[-1] // 2
    inv_freq_F = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_BTF = positions_BT[..., None].astype(jnp.float32) * inv_freq_F
    cos, sin = jnp.cos(angle_BTF)[:, :, None, :], jnp.sin(angle_BTF)[:, :, None, :]
    x1, x2 = x_BTHd[..., :half], x_BTHd[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BTHd.dtype)


def gelu(x: jax.Array) -> jax.Array:
    """The exact (erf) GELU, as torch's default and GPT-2's reference code use."""
    return jax.nn.gelu(x, approximate=False)


class MLP(nnx.Module):
    """Position-wise feed-forward: GELU (fc -> gelu -> proj) or SwiGLU (silu(gate) * up -> proj)."""

    def __init__(self, cfg: ModelConfig, hidden: int, rngs: nnx.Rngs):
        D = cfg.d_model
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:  # gate and up projections fused into one matmul: kernel [D, 2, F]
            self.gate_up = Dense(cfg, (D,), (2, hidden), ("embed",), (None, "mlp"), "hidden", rngs)
        else:
            self.fc = Dense(cfg, (D,), (hidden,), ("embed",), ("mlp",), "hidden", rngs)
        self.proj = Dense(cfg, (hidden,), (D,), ("mlp",), ("embed",), "output", rngs)

    def __call__(self, x_ND: jax.Array) -> jax.Array:
        if self.swiglu:
            gate_up_N2F = self.gate_up(x_ND)
            h_NF = jax.nn.silu(gate_up_N2F[:, 0]) * gate_up_N2F[:, 1]
        else:
            h_NF = gelu(self.fc(x_ND))
        return self.proj(h_NF)
