"""Initialisation schemes, chosen by name in `model.init`.

Every weight is created with a *role*, and the scheme maps the role to a distribution:

    role      what                                        fan_in / fan_out
    embed     token and position tables                   -
    hidden    q, kv, gate, MLP input, router              D / output width
    output    projections that write into the residual    input width / D
              stream (attention out, MLP out, expert out)
    head      the untied LM head                          D / V

    scheme       embed        hidden              output                   head
    normal       N(0, s)      N(0, s)             N(0, s)                  N(0, s)
    gpt2_scaled  N(0, s)      N(0, s)             N(0, s / sqrt(2 L))      N(0, s)
    xavier       N(0, s)      U(+-sqrt(6/(fi+fo)))  same                   same
    kaiming      N(0, s)      N(0, 1/sqrt(fi))    same                     same
    zero_out     N(0, s)      N(0, s)             0                        0

with s = model.init_std (0.02). GPT-2 scales the output projections by 1/sqrt(2L)
because each of the 2L residual branches adds its variance to the stream; zero_out
(as in modded-nanogpt) makes every block start as the identity. "kaiming" is the
fan-in rule with gain 1 (LeCun normal): it keeps the variance of a linear map's
output equal to its input's. Biases start at 0, norm scales at 1.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp

from mylm_jax.config import ModelConfig

Role = Literal["embed", "hidden", "output", "head"]
Initializer = Callable[[jax.Array, tuple[int, ...]], jax.Array]


def _normal(std: float) -> Initializer:
    return lambda key, shape: std * jax.random.normal(key, shape, jnp.float32)


def _uniform(limit: float) -> Initializer:
    return lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def _zeros(key, shape):
    del key
    return jnp.zeros(shape, jnp.float32)


def initializer(cfg: ModelConfig, role: Role, fan_in: int = 0, fan_out: int = 0) -> Initializer:
    """The initializer for a weight of this role under `cfg.init` (see the table above)."""
    std, scheme = cfg.init_std, cfg.init
    if role == "embed":
        return _normal(std)
    if scheme == "normal":
        return _normal(std)
    if scheme == "gpt2_scaled":
        return _normal(std / math.sqrt(2 * cfg.n_layers) if role == "output" else std)
    if scheme == "xavier":
        return _uniform(math.sqrt(6.0 / (fan_in + fan_out)))
    if scheme == "kaiming":
        return _normal(1.0 / math.sqrt(fan_in))
    if scheme == "zero_out":
        return _zeros if role in ("output", "head") else _normal(std)
    raise ValueError(f"unknown init scheme {scheme!r}")  # unreachable: the config validates it
