"""Per-device memory of a training step, from the config and the mesh alone (nothing is compiled).

    python scripts/memory_plan.py --config configs/gpt2_124m.yaml --mesh fsdp=8 --batch-size 8
    python scripts/memory_plan.py --table                       # docs/scaling.md's table
    python scripts/memory_plan.py --config configs/gpt2_tiny.yaml --check model.scan_layers=true   # vs XLA here

For one device of the mesh (`--mesh data=2,fsdp=4`, the mesh config's axes), with
`--batch-size` sequences of data.seq_len tokens per device per microbatch:

    params       every parameter's shard (mylm_jax/parallel.py's rules: embed over fsdp; heads,
                 mlp, vocab over tensor; experts over expert; an axis the mesh does not divide
                 stays whole), x bytes of model.param_dtype
    optimizer    AdamW: m and v per AdamW parameter; Muon: one momentum per Muon matrix (plus
                 AdamW's two for the rest, mylm_jax/optim/grouping.py), x bytes of optim.moment_dtype
    gradients    one per parameter shard, in the parameter's dtype
    activations  what the backward pass keeps, per layer, for model.remat:
                     none           every residual autodiff keeps for the block (below)
                     dots / dots_saveable   the matmul outputs the policy saves
                     full           nothing inside the block
                 + the block's input [N, D] (the residual stream; the scan's carry), x n_layers,
                 + the head (final norm, logits [N, V], the loss), + with remat, one block's
                 residuals while that block is recomputed.

The residuals are counted from the model code itself: one block (each kind, dense or MoE)
is traced abstractly through jax.vjp under the remat policy, and the arrays its backward
closure holds, other than the block's own inputs, are summed. docs/scaling.md writes the
count out for the GPT-2 family (per layer, float32: 28 N D + 13 B H T (T + b) / 2 bytes and
the fused q|kv kernel, b = attention_block).

`--check` compiles the training step of the config on this machine (one device) and compares:
params + optimizer against XLA's argument bytes (less the batch), gradients + activations
against XLA's temporary bytes (memory_analysis().temp_size_in_bytes); exit status 1 when
either differs by more than --tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from mylm_jax.config import ConfigError, config_from_dict, load_config  # noqa: E402
from mylm_jax.fileio import atomic_write  # noqa: E402
from mylm_jax.model.gpt import GPT, Block  # noqa: E402
from mylm_jax.model.params import logical_axes, param_shapes  # noqa: E402
from mylm_jax.model.stack import REMAT_POLICIES  # noqa: E402
from mylm_jax.optim.build import param_assignments  # noqa: E402
from mylm_jax.parallel import BATCH_AXES, MESH_AXES, logical_to_spec  # noqa: E402
from mylm_jax.studies.results import markdown_table  # noqa: E402
from mylm_jax.train.loss import cross_entropy_sum  # noqa: E402

POLICIES = ("none", "dots", "dots_saveable", "full")
# docs/scaling.md's table: GPT-2 124M and 350M (GPT-2 small, medium), and GPT-3 XL's 1.3B shape.
SIZES = {"124M": dict(d_model=768, n_layers=12, n_heads=12), "350M": dict(d_model=1024, n_layers=24, n_heads=16),
         "1.3B": dict(d_model=2048, n_layers=24, n_heads=16)}
DEVICES = (1, 8, 64)


def parse_mesh(text: str) -> dict[str, int]:
    sizes = dict.fromkeys(MESH_AXES, 1)
    for part in filter(None, text.split(",")):
        axis, _, n = part.partition("=")
        if axis not in sizes or not n.isdigit() or int(n) < 1:
            raise ConfigError(f"--mesh: {part!r} is not axis=size with axis one of {', '.join(MESH_AXES)}")
        sizes[axis] = int(n)
    return sizes


def shard_elements(shape, axes, mesh: dict[str, int]) -> int:
    spec = logical_to_spec(tuple(shape), tuple(axes), SimpleNamespace(shape=mesh))
    return math.prod(n // (mesh[a] if a else 1) for n, a in zip(shape, spec))


def _nbytes(shapes) -> int:
    return sum(math.prod(s.shape) * s.dtype.itemsize for s in jax.tree.leaves(shapes))


def residual_bytes(fn, *args, policy: str = "none") -> int:
    """Bytes of the arrays fn's backward pass keeps (its vjp closure), other than fn's inputs:
    traced abstractly, under jax.checkpoint with the remat policy."""
    f = fn if policy == "none" else jax.checkpoint(fn, policy=REMAT_POLICIES[policy])

    def kept(*args):
        _, vjp = jax.vjp(f, *args)
        inputs = {id(a) for a in jax.tree.leaves(args)}
        return [r for r in jax.tree.leaves(vjp) if id(r) not in inputs]

    return _nbytes(jax.eval_shape(kept, *args))


def local_model(cfg, mesh: dict[str, int]):
    """The model config as one device computes it: heads, kv heads, hidden widths and experts
    divided by the mesh axes their rules name (when they divide)."""
    tp, ep = mesh["tensor"], mesh["expert"]
    div = lambda n, k: n // k if n and n % k == 0 else n  # noqa: E731
    m = cfg.model
    return dataclasses.replace(m, n_heads=div(m.n_heads, tp), n_kv_heads=div(m.kv_heads, tp),
                               d_model=m.d_model if div(m.n_heads, tp) == m.n_heads else m.head_dim * div(m.n_heads, tp),
                               d_ff=div(m.ffn_dim, tp), moe_d_ff=div(m.expert_dim, tp) if m.n_experts else None,
                               n_experts=div(m.n_experts, ep), top_k=min(m.top_k, div(m.n_experts, ep) or m.top_k),
                               vocab_size=div(m.vocab_size, tp))


def activation_bytes(cfg, mesh: dict[str, int], B: int, policy: str) -> dict[str, int]:
    """{"layers", "head", "recompute"}: the activations one device keeps (see the module docstring)."""
    m, T = cfg.model, cfg.data.seq_len
    local = local_model(cfg, mesh)
    N, D = B * T, m.d_model  # the residual stream is whole on every tensor-parallel device
    positions = segment_ids = jax.ShapeDtypeStruct((B, T), jnp.int32)  # inputs, so not counted
    x = jax.ShapeDtypeStruct((N, local.d_model), jnp.float32)

    def block_bytes(layer: int, p: str) -> int:
        graphdef, state = nnx.split(nnx.eval_shape(lambda: Block(local, layer, nnx.Rngs(0))))
        fn = lambda s, x, pos, seg: nnx.merge(graphdef, s)(x, B, T, pos, seg)  # noqa: E731
        return residual_bytes(fn, state, x, positions, segment_ids, policy=p)

    kinds = {}  # a dense and a MoE block at most: trace each kind once
    for i in range(m.n_layers):
        kinds.setdefault(m.is_moe_layer(i), []).append(i)
    layers = sum(len(ls) * (block_bytes(ls[0], policy) + N * D * 4) for ls in kinds.values())
    # With remat, a block's backward first rebuilds what the policy did not keep.
    recompute = 0 if policy == "none" else max(block_bytes(ls[0], "none") - block_bytes(ls[0], policy)
                                               for ls in kinds.values())

    # Embedding, final norm, logits and loss: a one-layer dense model's residuals less its block's.
    one = dataclasses.replace(local, n_layers=1, n_experts=0, moe_layers=None, n_shared_experts=0, remat="none")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: GPT(one, nnx.Rngs(0))))

    def loss(s, tokens, segment_ids, positions, mask):
        logits, _ = nnx.merge(graphdef, s)(tokens, segment_ids, positions)
        return cross_entropy_sum(logits, tokens, mask)

    whole = residual_bytes(loss, state, positions, positions, positions, jax.ShapeDtypeStruct((B, T), jnp.float32))
    graphdef_b, state_b = nnx.split(nnx.eval_shape(lambda: Block(one, 0, nnx.Rngs(0))))
    block = residual_bytes(lambda s, x, pos, seg: nnx.merge(graphdef_b, s)(x, B, T, pos, seg), state_b, x,
                           positions, segment_ids)
    head_bytes = whole - block
    return {"layers": layers, "head": head_bytes, "recompute": recompute}


def plan(cfg, mesh: dict[str, int], batch_size: int, policy: str | None = None) -> dict[str, int]:
    """Per-device bytes: params, optimizer, gradients, activations (and their parts), total."""
    policy = policy or cfg.model.remat
    model = nnx.eval_shape(lambda: GPT(cfg.model, nnx.Rngs(0)))
    shapes, axes = param_shapes(model), logical_axes(model)
    local = {name: shard_elements(shapes[name], axes[name], mesh) for name in shapes}
    p_bytes = jnp.dtype(cfg.model.param_dtype).itemsize
    m_bytes = jnp.dtype(cfg.optim.moment_dtype).itemsize
    moments = {"adamw": 2, "muon": 1}
    assignments = param_assignments(model, cfg.optim)
    params = sum(local.values()) * p_bytes
    optimizer = sum(moments[assignments[n].optimizer] * local[n] for n in local) * m_bytes
    acts = activation_bytes(cfg, mesh, batch_size, policy)
    # The peak is in the backward pass, with every layer's kept activations alive: the head's
    # residuals are freed (its backward done) before the last block is recomputed, so the
    # two are never alive together.
    activations = acts["layers"] + max(acts["head"], acts["recompute"])
    return {"params": params, "optimizer": optimizer, "gradients": params, "activations": activations,
            **{f"activations_{k}": v for k, v in acts.items()},
            "total": 2 * params + optimizer + activations}


def check(cfg, tolerance: float) -> dict:
    """The plan against XLA's memory analysis of the compiled step on this machine (one device)."""
    from scripts.bench_scan import BATCH_KEYS, compile_step

    if math.prod(getattr(cfg.mesh, a) for a in MESH_AXES if getattr(cfg.mesh, a) != -1) > 1:
        raise ConfigError("--check compiles on one device: use a config whose mesh is data=1 (the default)")
    mesh = dict.fromkeys(MESH_AXES, 1)
    p = plan(cfg, mesh, cfg.train.batch_size // cfg.train.microbatches)
    xla = compile_step(cfg)
    batch_bytes = len(BATCH_KEYS) * 4 * cfg.train.batch_size * cfg.data.seq_len
    pairs = {"params + optimizer": (p["params"] + p["optimizer"], xla["argument_bytes"] - batch_bytes),
             "gradients + activations": (p["gradients"] + p["activations"], xla["temp_bytes"])}
    rows = {name: {"plan": a, "xla": b, "ratio": a / b} for name, (a, b) in pairs.items()}
    rows_ok = all(abs(r["ratio"] - 1) <= tolerance for r in rows.values())
    return {"plan": p, "xla": xla, "compare": rows, "within_tolerance": rows_ok, "tolerance": tolerance}


def gpt2_config(size: str, devices: int, batch_size: int, policy: str):
    # blockwise attention (the CPU kernel, what --check measures): it keeps each head's causal
    # half of the T x T probabilities; cuDNN's flash attention keeps O(T) statistics instead.
    model = dict(vocab_size=50304, max_seq_len=1024, position="learned", norm="layernorm", mlp="gelu",
                 bias=True, dtype="bfloat16", attention_impl="blockwise", remat=policy, scan_layers=True,
                 **SIZES[size])
    return config_from_dict({"model": model, "data": {"seq_len": 1024}, "mesh": {"data": 1, "fsdp": devices},
                             "train": {"batch_size": batch_size * devices}})


def table(batch_size: int) -> tuple[str, list[dict]]:
    rows, records = [], []
    gib = lambda b: b / 2**30  # noqa: E731
    for size in SIZES:
        for devices in DEVICES:
            mesh = {**dict.fromkeys(MESH_AXES, 1), "fsdp": devices}
            by_policy = {pol: plan(gpt2_config(size, devices, batch_size, pol), mesh, batch_size) for pol in POLICIES}
            first = by_policy["none"]
            rows.append([size, devices, gib(first["params"]), gib(first["optimizer"]), gib(first["gradients"]),
                         *[gib(by_policy[pol]["activations"]) for pol in POLICIES],
                         *[gib(by_policy[pol]["total"]) for pol in ("none", "full")]])
            records.append({"size": size, "devices": devices, "mesh": mesh, "batch_size": batch_size,
                            "plans": by_policy})
    header = ["model", "devices (fsdp)", "params GiB", "AdamW GiB", "grads GiB",
              *[f"acts {pol} GiB" for pol in POLICIES], "total none GiB", "total full GiB"]
    return markdown_table(header, rows), records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a config YAML (with overrides after it)")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--mesh", default="", help="e.g. fsdp=8 or data=2,fsdp=4 (default: one device)")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="sequences per device per microbatch (default: the config's batch / microbatches)")
    parser.add_argument("--table", action="store_true", help="GPT-2 124M / 350M / 1.3B on 1, 8, 64 devices")
    parser.add_argument("--check", action="store_true", help="compare with the compiled step on this machine")
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--out", default="", help="write the figures as JSON")
    args = parser.parse_args()
    try:
        if args.table:
            text, result = table(args.batch_size or 8)
            print(f"per device, {args.batch_size or 8} sequences of 1024 tokens per device, bf16 compute, "
                  f"float32 params and AdamW moments, scanned layers, FSDP over all devices\n\n{text}")
        elif args.config:
            cfg = load_config(args.config, args.overrides)
            if args.check:
                result = check(cfg, args.tolerance)
                print(markdown_table(["", "plan bytes", "XLA bytes", "plan / XLA"],
                                     [[k, v["plan"], v["xla"], f"{v['ratio']:.3f}"] for k, v in result["compare"].items()]))
            else:
                mesh = parse_mesh(args.mesh)
                B = args.batch_size or cfg.train.batch_size // cfg.train.microbatches // max(
                    1, math.prod(mesh[a] for a in BATCH_AXES))
                result = {"mesh": mesh, "batch_size": B,
                          "plans": {pol: plan(cfg, mesh, B, pol) for pol in POLICIES}}
                print(markdown_table(["remat", *result["plans"]["none"]],
                                     [[pol, *p.values()] for pol, p in result["plans"].items()]))
        else:
            parser.error("give --config or --table")
    except ConfigError as e:
        sys.exit(f"error: {e}")
    if args.out:
        atomic_write(args.out, json.dumps(result, indent=1, default=str))
    if args.check and not result["within_tolerance"]:
        sys.exit(f"memory plan off by more than {args.tolerance:.0%} from XLA's figures")


if __name__ == "__main__":
    main()
