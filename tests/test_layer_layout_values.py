"""The scanned and unrolled weight layouts, name by name and row by row (mylm_jax/model/layout.py):
which layers share a segment, which row of which stacked array a layer is, and that every
conversion puts each layer's value exactly there. Each layer's value is its own index, so a
row in the wrong place shows as the wrong number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mylm_jax.model import layout
from mylm_jax.model.layout import Segment
from mylm_jax.variants import variant


def _cfg(n_layers, moe_layers=(), **kw):
    """A model whose MoE layers are `moe_layers` (None: every layer)."""
    if moe_layers == ():
        return variant("modern", n_layers=n_layers, **kw)
    return variant("moe_ragged", n_layers=n_layers, moe_layers=moe_layers, **kw)


@pytest.mark.parametrize("n_layers, moe_layers, want", [
    (4, (), (Segment(0, 1, 4),)),                                   # uniform: one body
    (4, None, (Segment(0, 1, 4),)),
    (4, (1, 3), (Segment(0, 2, 2),)),                               # MoE every other layer
    (6, (2, 5), (Segment(0, 3, 2),)),                               # dense, dense, MoE twice
    (2, (1,), (Segment(0, 2, 1),)),                                 # a tie (2 bodies either way): periodic
    (4, (2, 3), (Segment(0, 1, 2), Segment(2, 1, 2))),             # first k dense, the rest MoE: runs
    (4, (0, 3), (Segment(0, 1, 1), Segment(1, 1, 2), Segment(3, 1, 1))),  # irregular: its runs
])
def test_segments(n_layers, moe_layers, want):
    assert layout.segments(_cfg(n_layers, moe_layers)) == want


def test_a_segment_row_and_slot_is_one_layer():
    assert Segment(start=2, period=3, repeats=2).layer(r=1, j=2) == 2 + 1 * 3 + 2
    assert [layout.layer_kind(_cfg(3, (1,)), i) for i in range(3)] == ["dense", "moe", "dense"]


CFG = _cfg(6, (2, 5), scan_layers=True)  # Segment(0, period 3, repeats 2): layer i = 3 r + j
UNROLLED = {f"{prefix}blocks.{i}.w": np.full((2,), i, np.float32)
            for prefix in ("", "1.opt_state.0.mu.") for i in range(6)} | {"embed": np.zeros(3, np.float32)}
SCANNED = {f"{prefix}stack.0.{j}.w": np.array([[j, j], [3 + j, 3 + j]], np.float32)
           for prefix in ("", "1.opt_state.0.mu.") for j in range(3)} | {"embed": np.zeros(3, np.float32)}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.asarray(a[k]).tolist() == np.asarray(b[k]).tolist(), k


def test_unrolled_to_scanned_and_back_row_by_row():
    _same(layout.to_scanned(UNROLLED, CFG), SCANNED)
    _same(layout.to_unrolled(SCANNED, CFG), UNROLLED)
    _same(layout.to_layout(UNROLLED, CFG), SCANNED)
    _same(layout.to_layout(SCANNED, CFG), SCANNED)
    unrolled_cfg = _cfg(6, (2, 5), scan_layers=False)
    _same(layout.to_layout(SCANNED, unrolled_cfg), UNROLLED)
    _same(layout.to_layout(UNROLLED, unrolled_cfg), UNROLLED)
    assert layout.is_scanned_name("1.opt_state.0.mu.stack.0.2.w") and not layout.is_scanned_name("blocks.2.w")


def test_shapes_convert_like_arrays():
    shapes = {k: v.shape for k, v in UNROLLED.items()}
    assert layout.to_scanned(shapes, CFG) == {k: v.shape for k, v in SCANNED.items()}
    assert layout.unrolled_shapes({k: v.shape for k, v in SCANNED.items()}, CFG) == shapes
    assert layout.unrolled_shapes(shapes, CFG) == shapes


def test_jax_arrays_stack_as_jax_arrays():
    stacked = layout.to_scanned({k: jnp.asarray(v) for k, v in UNROLLED.items()}, CFG)
    assert isinstance(stacked["stack.0.1.w"], jax.Array)
    assert stacked["stack.0.1.w"].tolist() == [[1, 1], [4, 4]]


def test_a_tree_converts_by_name_and_a_missing_leaf_is_named():
    source = {"blocks": {str(i): {"w": np.full(2, i, np.float32)} for i in range(6)}, "embed": np.ones(3)}
    target = {"stack": {"0": {str(j): {"w": np.zeros((2, 2))} for j in range(3)}}, "embed": np.zeros(3)}
    out = layout.convert_tree(source, target, CFG)
    assert out["stack"]["0"]["2"]["w"].tolist() == [[2, 2], [5, 5]] and out["embed"].tolist() == [1, 1, 1]
    del source["blocks"]["2"], source["blocks"]["5"], source["embed"]
    with pytest.raises(ValueError, match=r"^layout conversion: no value for \['embed', 'stack.0.2.w'\] \(of 2\)$"):
        layout.convert_tree(source, target, CFG)
    with pytest.raises(ValueError, match=r"^layout conversion: no value for \['embed', 'stack.0.0.w', "
                                         r"'stack.0.1.w'\] \(of 4\)$"):  # the first three named
        layout.convert_tree({}, target, CFG)


class _Leaf(nnx.Module):
    def __init__(self, value):
        self.w = nnx.Param(jnp.full((2,), value, jnp.float32), out_sharding=("embed",), eager_sharding=False)
        self.b = nnx.Param(jnp.zeros((1,), jnp.float32))


def test_stacked_modules_hold_row_r_from_module_r_and_a_layers_axis():
    stacked = layout.stack_modules([_Leaf(0.0), _Leaf(1.0), _Leaf(2.0)])
    assert stacked.w[...].tolist() == [[0, 0], [1, 1], [2, 2]]
    assert stacked.w.get_metadata()["out_sharding"] == ("layers", "embed")
    assert stacked.b[...].shape == (3, 1) and stacked.b.get_metadata().get("out_sharding") is None
    # A segment repeated once (a period as long as the stack) stacks one module.
    assert layout.stack_modules([_Leaf(5.0)]).w[...].tolist() == [[5, 5]]


def test_a_state_converts_into_the_targets_structure():
    source = nnx.State({"blocks": {str(i): {"w": nnx.Param(jnp.full(2, float(i)))} for i in range(6)}})
    target = nnx.State({"stack": {"0": {str(j): {"w": nnx.Param(jnp.zeros((2, 2)))} for j in range(3)}}})
    out = layout.convert_state(source, target, CFG)
    assert out["stack"]["0"]["1"]["w"][...].tolist() == [[1, 1], [4, 4]]
    assert target["stack"]["0"]["1"]["w"][...].tolist() == [[0, 0], [0, 0]]  # the target is not changed
