"""Flat views of a model's parameters: `"blocks.0.attn.q.kernel" -> array`.

The flat dict of numpy arrays is the neutral format between frameworks: the
PyTorch twin's converter (`mylm_torch.convert`) reads and writes it, so the twin
never imports jax.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx


def _path_str(path) -> str:
    return ".".join(str(p) for p in path)


def param_variables(model: nnx.Module) -> dict[str, nnx.Param]:
    """Every parameter Variable by dotted path (works on an abstract model too)."""
    return {_path_str(path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def flat_arrays(state: nnx.State) -> dict[str, np.ndarray]:
    """Any nnx State (parameters, gradients) as float32 numpy arrays keyed by dotted path."""
    return {_path_str(path): np.asarray(jax.device_get(var[...]), np.float32)
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
