"""The layer stack: n_layers blocks, unrolled or under `nnx.scan`, each optionally rematerialised.

Unrolled (model.scan_layers: false): `GPT.blocks`, a list of blocks called one after the
other. The compiled program holds every layer's code, so its compile time grows with
n_layers (~linearly on XLA:CPU).

Scanned (model.scan_layers: true): `GPT.stack`, one module per segment and position in its
period, every array with a leading "layers" axis (mylm_jax/model/layout.py: the segments,
the names, conversion). `nnx.scan` runs each segment's blocks as a loop whose body holds
one period of blocks: traced and compiled once whatever n_layers is, and the backward
pass is a loop too. The same numbers as unrolled (tests/test_scan_layers.py). A scanned
model starts from the same weights as an unrolled one of the same seed: the blocks are
built one by one in layer order, as unrolled, and then stacked.

Rematerialisation (model.remat) wraps each block in `nnx.remat` (jax.checkpoint) with a
policy for what the backward pass may keep from the forward pass; the rest it recomputes:

    none           everything autodiff wants: no recomputation, the most memory
    dots           the outputs of matmuls with weights (q|kv|gate, out, fc / gate_up, proj,
                   experts): the elementwise ops and attention's scores are recomputed
                   (jax's dots_with_no_batch_dims_saveable; MaxText's "minimal")
    dots_saveable  every matmul output, attention's batched einsums included: with the
                   reference kernel that keeps the T x T scores (jax's dots_saveable)
    full           nothing but each block's input: the forward pass runs twice (~+1/3 of
                   the step's FLOPs); activations drop to one [N, D] per layer plus one
                   block's worth while it is recomputed
docs/scaling.md has the measured memory and the formula per layer. On XLA:CPU remat saves
memory only under scan; unrolled, the compiled step keeps as much as without it (measured).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from mylm_jax.config import ModelConfig
from mylm_jax.model.layout import segments, stack_modules

REMAT_POLICIES = {
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}

# fn(block, x_ND, *per_layer) -> (x_ND, out): one layer's work. `per_layer` are the layer's own
# inputs (its KV cache when decoding), `out` what it reports (MoE aux, the updated cache, or None).
LayerFn = Callable[..., tuple[jax.Array, Any]]


def build_stack(cfg: ModelConfig, make_block: Callable[[int], nnx.Module]) -> nnx.List:
    """The scanned stack: stack[s][j] holds the blocks at position j of segment s's period,
    stacked. make_block(i) builds layer i; called in layer order (the unrolled model's rngs)."""
    blocks = [make_block(i) for i in range(cfg.n_layers)]
    return nnx.List([nnx.List([stack_modules([blocks[seg.layer(r, j)] for r in range(seg.repeats)])
                               for j in range(seg.period)]) for seg in segments(cfg)])


def layer_block(model: nnx.Module, layer: int) -> nnx.Module:
    """Block `layer` of a GPT in either layout: the unrolled module itself, or for a scanned
    stack a module holding row r of its segment's stacked arrays (a copy: for reading,
    e.g. mylm_jax/model/inspect.py; training updates go through the stack)."""
    cfg = model.cfg
    if not cfg.scan_layers:
        return model.blocks[layer]
    for seg, group in zip(segments(cfg), model.stack):
        r, j = divmod(layer - seg.start, seg.period)
        if 0 <= r < seg.repeats:
            graphdef, state = nnx.split(group[j])
            return nnx.merge(graphdef, jax.tree.map(lambda a: a[r], state))
    raise IndexError(f"layer {layer} out of range: the model has {cfg.n_layers} layers")


def _remat(cfg: ModelConfig, fn: LayerFn, scanned: bool) -> LayerFn:
    if cfg.remat == "none":
        return fn
    # Inside a scan the loop already keeps XLA from merging the recomputation into the
    # forward pass; outside one, prevent_cse must stay on (jax.checkpoint's docs).
    return nnx.remat(fn, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not scanned)


def run_layers(cfg: ModelConfig, model: nnx.Module, x_ND: jax.Array, fn: LayerFn,
               per_layer: list | None = None, remat: bool = True) -> tuple[jax.Array, list]:
    """x through every layer of `model` (GPT: its `blocks` or its `stack`), in layer order.

    per_layer: one pytree per layer passed to fn (None: nothing). Returns x and the
    layers' outputs as a list in layer order."""
    L = cfg.n_layers
    per_layer = per_layer if per_layer is not None else [()] * L
    if not cfg.scan_layers:
        fn = _remat(cfg, fn, scanned=False) if remat else fn
        outs = []
        for block, extra in zip(model.blocks, per_layer):
            x_ND, out = fn(block, x_ND, *extra)
            outs.append(out)
        return x_ND, outs
    fn = _remat(cfg, fn, scanned=True) if remat else fn

    @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
    def body(x_ND, group, extras):  # one period: group[j] and extras[j] are layer j's rows
        outs = []
        for block, extra in zip(group, extras):
            x_ND, out = fn(block, x_ND, *extra)
            outs.append(out)
        return x_ND, outs

    outs = [None] * L
    for seg, group in zip(segments(cfg), model.stack):
        # Each position's per-layer inputs stacked along the scanned axis, outputs unstacked.
        extras = [jax.tree.map(lambda *xs: jax.numpy.stack(xs),
                               *[per_layer[seg.layer(r, j)] for r in range(seg.repeats)])
                  for j in range(seg.period)]
        x_ND, seg_outs = body(x_ND, group, extras)
        for j in range(seg.period):
            for r in range(seg.repeats):
                outs[seg.layer(r, j)] = jax.tree.map(lambda y: y[r], seg_outs[j])
    return x_ND, outs
