"""The two layouts of the layer stack's weights, and conversion between them.

    unrolled  (model.scan_layers: false)  blocks.{i}.<name>        one module per layer     [*shape]
    scanned   (model.scan_layers: true)   stack.{s}.{j}.<name>     stacked per segment   [repeats, *shape]

Blocks differ only in their *kind* (`layer_kind`: MoE or dense feed-forward), so the stack
is cut into segments, each a pattern of `period` consecutive layers repeated `repeats`
times; layer

    i = segment.start + r * segment.period + j        is row r of stack.{s}.{j}.

`segments(cfg)` picks the cut that traces the fewest distinct blocks (what the compile
time grows with):
    * periodic: the shortest period p that divides n_layers with kind(i) == kind(i mod p),
      one segment: a uniform stack (p = 1), MoE every other layer (p = 2), ...
    * runs: maximal runs of one kind, a segment each (period 1): "the first k layers
      dense, the rest MoE" scans the two runs separately.
The fewer bodies wins (periodic on a tie); an irregular pattern such as moe_layers=(0, 3)
of 4 falls back to its runs (MoE, dense x 2, MoE: three bodies; correct, slower to compile).

The conversion works on dotted names anywhere in a path, so it maps whole training states
too: the optimizer's moments carry their parameter's name as a suffix
("1.opt_state.0.mu.blocks.3.attn.q.kernel"). The twin, the parity suite and the Hugging
Face export read the unrolled layout; checkpoints restore into either (mylm_jax/train/run_dir.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mylm_jax.config import ModelConfig
from mylm_jax.model.params import path_name

LAYER_AXIS = "layers"  # the logical name of the stacked axis (mylm_jax/parallel.py: no mesh axis)
_SCANNED = re.compile(r"(^|.*\.)stack\.(\d+)\.(\d+)\.(.+)$")
_UNROLLED = re.compile(r"(^|.*\.)blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Segment:
    start: int
    period: int
    repeats: int

    def layer(self, r: int, j: int) -> int:
        return self.start + r * self.period + j


def layer_kind(cfg: ModelConfig, layer: int) -> str:
    """What makes blocks differ in structure (mylm_jax/model/gpt.py: Block)."""
    return "moe" if cfg.is_moe_layer(layer) else "dense"


def segments(cfg: ModelConfig) -> tuple[Segment, ...]:
    """The scanned stack's segments (see the module docstring)."""
    L = cfg.n_layers
    kinds = [layer_kind(cfg, i) for i in range(L)]
    period = next(p for p in range(1, L + 1) if L % p == 0 and all(kinds[i] == kinds[i % p] for i in range(L)))
    runs, start = [], 0
    for i in range(1, L + 1):
        if i == L or kinds[i] != kinds[start]:
            runs.append(Segment(start, 1, i - start))
            start = i
    return (Segment(0, period, L // period),) if period <= len(runs) else tuple(runs)


def is_scanned_name(name: str) -> bool:
    return _SCANNED.match(name) is not None


def to_unrolled(flat: dict[str, Any], cfg: ModelConfig, take: Callable = lambda v, r: v[r]) -> dict[str, Any]:
    """Scanned names -> unrolled (other names unchanged). `take(value, r)` is row r
    (default: indexing; shapes: lambda s, r: s[1:])."""
    segs, out = segments(cfg), {}
    for name, value in flat.items():
        m = _SCANNED.match(name)
        if m is None:
            out[name] = value
            continue
        prefix, s, j, rest = m[1], int(m[2]), int(m[3]), m[4]
        for r in range(segs[s].repeats):
            out[f"{prefix}blocks.{segs[s].layer(r, j)}.{rest}"] = take(value, r)
    return out


def _stack(values: list):
    if all(isinstance(v, tuple) for v in values):  # shapes
        return (len(values),) + values[0]
    if all(isinstance(v, np.ndarray) for v in values):
        return np.stack(values)
    return jnp.stack(values)


def to_scanned(flat: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """Unrolled names -> scanned (other names unchanged): numpy arrays, jax arrays or shapes."""
    where = {seg.layer(r, j): (s, j) for s, seg in enumerate(segments(cfg))
             for r in range(seg.repeats) for j in range(seg.period)}
    out, groups = {}, {}
    for name, value in flat.items():
        m = _UNROLLED.match(name)
        if m is None:
            out[name] = value
            continue
        s, j = where[int(m[2])]
        groups.setdefault(f"{m[1]}stack.{s}.{j}.{m[3]}", {})[int(m[2])] = value
    for name, rows in groups.items():
        out[name] = _stack([rows[i] for i in sorted(rows)])  # layer order = row order within (s, j)
    return out


def to_layout(flat: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """`flat` (either layout) in the layout cfg.scan_layers asks for."""
    return to_scanned(to_unrolled(flat, cfg), cfg) if cfg.scan_layers else to_unrolled(flat, cfg)


def unrolled_shapes(shapes: dict[str, tuple[int, ...]], cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes by unrolled name, whichever layout they come from."""
    return to_unrolled(shapes, cfg, take=lambda shape, r: tuple(shape[1:]))


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
    """Modules of one structure -> one module whose every array has a new leading axis
    (logical name LAYER_AXIS prepended to its metadata), row r from modules[r]."""
    graphdef, first = nnx.split(modules[0])
    states = [first] + [nnx.split(m)[1] for m in modules[1:]]
    stacked = nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))
    for _, var in nnx.to_flat_state(nnx.state(stacked)):
        axes = var.get_metadata().get("out_sharding")
        if axes is not None:
            var.set_metadata(out_sharding=(LAYER_AXIS,) + tuple(axes))
    return stacked


def convert_tree(source: Any, target: Any, cfg: ModelConfig) -> Any:
    """A pytree of arrays (e.g. `nnx.to_pure_dict` of a training state) in one layout ->
    the structure of `target` (the same state in cfg's layout): every leaf found by name."""
    flat = {path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(source)[0]}
    converted = to_layout(flat, cfg)
    missing = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(target)[0]
               if path_name(p) not in converted]
    if missing:
        raise ValueError(f"layout conversion: no value for {missing[:3]} (of {len(missing)})")
    return jax.tree_util.tree_map_with_path(lambda p, _: converted[path_name(p)], target)




def convert_state(state: nnx.State, target: Any, cfg: ModelConfig) -> Any:
    """An nnx State in one layout (a restored training state) -> the structure of `target`
    (the same state's abstract arrays in cfg's layout), values converted by name."""
    converted = convert_tree(nnx.to_pure_dict(state), nnx.to_pure_dict(target), cfg)
    out = jax.tree.map(lambda x: x, target)
    nnx.replace_by_pure_dict(out, converted)
    return out
