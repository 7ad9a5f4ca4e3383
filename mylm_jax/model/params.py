"""Flat views of a model's parameters: `"blocks.0.attn.q.kernel" -> array`.

The flat dict of numpy arrays is the neutral format between frameworks: the
PyTorch twin's converter (`mylm_torch.convert`) reads and writes it, so the twin
never imports jax.

`build_with_random_params(make, seed)` builds a module with `random_params` weights
without running its initialisers: the tests, the parity suite and the layer benchmark
start from it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx


def path_name(path: Sequence[Any]) -> str:
    """A parameter's dotted name ("blocks.0.attn.q.kernel") from its path: an nnx flat-state
    path (names and indices) or a jax tree key path (dict keys and sequence indices; attribute
    steps such as a Variable's `.value` are not part of the name)."""
    parts = [k if isinstance(k, (str, int)) else getattr(k, "key", getattr(k, "idx", None)) for k in path]
    return ".".join(str(p) for p in parts if p is not None)


def param_variables(model: nnx.Module) -> dict[str, nnx.Param]:
    """Every parameter Variable by dotted path (works on an abstract model too)."""
    return {path_name(path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def flat_arrays(state: nnx.State) -> dict[str, np.ndarray]:
    """Any nnx State (parameters, gradients) as float32 numpy arrays keyed by dotted path."""
    return {path_name(path): np.asarray(jax.device_get(var[...]), np.float32)
            for path, var in nnx.to_flat_state(state)}


def flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every parameter as a float32 numpy array, keyed by its dotted path."""
    return flat_arrays(nnx.state(model, nnx.Param))


def load_flat_params(model: nnx.Module, flat: dict[str, np.ndarray]) -> None:
    """Overwrite the model's parameters in place (float32); names and shapes must match exactly.

    Works on an abstract model from `nnx.eval_shape` too: that builds a model with given
    weights without running (and compiling) its initialisers.
    """
    current = param_variables(model)
    missing, unexpected = sorted(set(current) - set(flat)), sorted(set(flat) - set(current))
    if missing or unexpected:
        raise ValueError(f"parameter names differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, var in current.items():
        value = np.asarray(flat[name])
        if value.shape != tuple(var.shape):
            raise ValueError(f"{name}: shape {value.shape}, model expects {tuple(var.shape)}")
        var.set_value(jax.numpy.asarray(value, jax.numpy.float32))


def logical_axes(model: nnx.Module) -> dict[str, tuple[str | None, ...]]:
    """The logical axis names of every parameter (see `mylm_jax.model.layers.param`)."""
    return {name: var.get_metadata()["out_sharding"] for name, var in param_variables(model).items()}


def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Shapes by path; works on an abstract model from `nnx.eval_shape` too."""
    return {name: tuple(var.shape) for name, var in param_variables(model).items()}


def count_params(model: nnx.Module) -> int:
    return sum(int(np.prod(shape)) for shape in param_shapes(model).values())


def param_stats(model: nnx.Module) -> dict[str, dict]:
    """Per parameter: shape, L2 norm, mean, std and max |x| (in float64, from the float32
    values), by dotted path; `mylm checkpoint show --weights` prints them."""
    out = {}
    for name, value in flat_params(model).items():
        x = value.astype(np.float64)
        out[name] = {"shape": tuple(value.shape), "norm": float(np.sqrt((x * x).sum())), "mean": float(x.mean()),
                     "std": float(x.std()), "max_abs": float(np.abs(x).max()) if x.size else 0.0}
    return out


def random_params(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Random float32 values for every parameter, so that no part of the math is trivial.

    Norm scales U(0.5, 1.5) and biases N(0, 0.1) (not 1 and 0, so bugs in them show);
    embeddings N(0, 0.3); matmul kernels N(0, 1/fan_in) (activations stay O(1), attention
    and routing are far from uniform).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("scale"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif name in ("embed", "pos_embed"):
            value = rng.normal(0.0, 0.3, shape)
        else:
            if name.endswith("out.kernel"):  # attention out [H, d, D]
                fan_in = shape[0] * shape[1]
            elif name.endswith(("w_in", "w_out")):  # experts [E, in, ...]
                fan_in = shape[1]
            else:  # [in, ...]: q, kv, gate, fc, gate_up, proj, router, lm_head
                fan_in = shape[0]
            value = rng.normal(0.0, fan_in ** -0.5, shape)
        out[name] = value.astype(np.float32)
    return out


def build_with_random_params(make: Callable[[], nnx.Module], seed: int) -> nnx.Module:
    """The module `make()` builds, with `random_params(..., seed)` weights.

    The module is built abstractly (nnx.eval_shape) and then filled: running its own
    initialisers eagerly would compile a random-number kernel per shape, seconds per test.
    """
    module = nnx.eval_shape(make)
    load_flat_params(module, random_params(param_shapes(module), seed))
    return module
