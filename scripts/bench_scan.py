"""What `model.scan_layers` and `model.remat` cost and save, measured on the compiled training step.

    python scripts/bench_scan.py                          # the default sizes below, ~5 minutes on CPU
    python scripts/bench_scan.py --d-model 128 --seq-len 128 --out runs/bench_scan_small.json

Two tables, from one process (ratios measured side by side; absolute times depend on the load):

1. Compile time of the training step (make_train_step: forward, backward, AdamW) of a
   GPT-2-family model with 12 and 24 layers, unrolled vs scanned: tracing + lowering to
   StableHLO ("lower s") and XLA's compilation ("compile s"). Nothing runs: the state is
   abstract (shapes and shardings only), so no memory is allocated for it.
2. For each remat policy, unrolled and scanned (12 layers): XLA's memory analysis of the
   compiled step (`jitted.lower(...).compile().memory_analysis()`): temp = the peak of the
   temporary buffers (activations kept for the backward pass, gradients, the optimizer's
   intermediates), args = the state and the batch; and the median time of a step that runs
   (with --run-steps > 0).

The persistent compilation cache is switched off, so every compile is a real one. Writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mylm_jax.config import config_from_dict  # noqa: E402
from mylm_jax.fileio import atomic_write  # noqa: E402
from mylm_jax.parallel import make_mesh, shard_batch  # noqa: E402
from mylm_jax.studies.results import markdown_table  # noqa: E402
from mylm_jax.train.state import abstract_train_state, create_state  # noqa: E402
from mylm_jax.train.step import make_train_step  # noqa: E402

POLICIES = ("none", "dots", "dots_saveable", "full")
BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


def bench_config(args, n_layers: int, scan: bool, remat: str = "none"):
    model = dict(vocab_size=args.vocab, max_seq_len=args.seq_len, d_model=args.d_model, n_layers=n_layers,
                 n_heads=args.heads, scan_layers=scan, remat=remat)
    return config_from_dict({"model": model, "data": {"seq_len": args.seq_len},
                             "train": {"batch_size": args.batch_size}, "optim": {"name": "adamw"}})


def abstract_inputs(cfg, ts):
    """The step's arguments as shapes with shardings: (state, batch [1, B, T])."""
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), ts.state, ts.shardings)
    B, T = cfg.train.batch_size, cfg.data.seq_len
    batch = {k: jax.ShapeDtypeStruct((1, B, T), jnp.float32 if k == "loss_mask" else jnp.int32) for k in BATCH_KEYS}
    return state, batch


def compile_step(cfg) -> dict:
    """Lower and compile the training step of `cfg` without any arrays: times and memory analysis."""
    mesh = make_mesh(cfg.mesh)
    ts, _ = abstract_train_state(cfg, mesh)
    step = make_train_step(cfg, ts)
    start = time.perf_counter()
    lowered = step.lower(*abstract_inputs(cfg, ts))
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    m = compiled.memory_analysis()
    return {"lower_s": lowered_at - start, "compile_s": done - lowered_at, "temp_bytes": m.temp_size_in_bytes,
            "argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
            "alias_bytes": m.alias_size_in_bytes}


def step_ms(cfg, steps: int) -> float:
    """Median wall time of `steps` training steps on random tokens (after one warm-up)."""
    mesh = make_mesh(cfg.mesh)
    ts = create_state(cfg, mesh)
    step = make_train_step(cfg, ts)
    B, T = cfg.train.batch_size, cfg.data.seq_len
    inputs = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (B, T)).astype(np.int32)
    host = {"inputs": inputs, "targets": np.roll(inputs, -1, 1), "loss_mask": np.ones((B, T), np.float32),
            "segment_ids": np.ones((B, T), np.int32), "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1))}
    batch, state, times = shard_batch(host, mesh), ts.state, []
    for i in range(steps + 1):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 24], help="depths for the compile table")
    parser.add_argument("--remat-layers", type=int, default=12, help="depth for the remat table")
    parser.add_argument("--run-steps", type=int, default=5, help="timed steps per remat row (0: compile only)")
    parser.add_argument("--out", default="runs/bench_scan.json")
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)

    size = (f"d_model {args.d_model}, {args.heads} heads, vocab {args.vocab}, B {args.batch_size}, "
            f"T {args.seq_len}, float32, AdamW, {jax.devices()[0].platform}")
    compile_rows = []
    for L in args.layers:
        for scan in (False, True):
            r = compile_step(bench_config(args, L, scan))
            compile_rows.append({"layers": L, "scan_layers": scan, **r})
            print(f"compiled {L} layers scan={scan}: {r['lower_s'] + r['compile_s']:.1f} s", file=sys.stderr, flush=True)
    remat_rows = []
    for remat in POLICIES:
        for scan in (False, True):
            cfg = bench_config(args, args.remat_layers, scan, remat)
            r = compile_step(cfg)
            if args.run_steps:
                r["step_ms"] = step_ms(cfg, args.run_steps)
            remat_rows.append({"remat": remat, "scan_layers": scan, **r})
            print(f"remat={remat} scan={scan}: temp {r['temp_bytes'] / 2**20:.1f} MiB", file=sys.stderr, flush=True)

    print(f"training step ({size})\n")
    by = {(r["layers"], r["scan_layers"]): r for r in compile_rows}
    rows = []
    for L in args.layers:
        unrolled, scanned = by[L, False], by[L, True]
        total = lambda r: r["lower_s"] + r["compile_s"]  # noqa: E731
        for r in (unrolled, scanned):
            rows.append([L, "scanned" if r is scanned else "unrolled", r["lower_s"], r["compile_s"], total(r),
                         f"{total(r) / total(unrolled):.2f}"])
    print(markdown_table(["layers", "stack", "lower s", "compile s", "total s", "vs unrolled"], rows))
    base = next(r for r in remat_rows if r["remat"] == "none" and not r["scan_layers"])["temp_bytes"]
    rows = [[r["remat"], "scanned" if r["scan_layers"] else "unrolled", r["temp_bytes"] / 2**20,
             f"{r['temp_bytes'] / base:.2f}", r["argument_bytes"] / 2**20, r.get("step_ms", float("nan"))]
            for r in remat_rows]
    print(markdown_table(["remat", "stack", "temp MiB", "vs none unrolled", "args MiB", "step ms"], rows))
    atomic_write(args.out, json.dumps({"size": size, "args": vars(args), "compile": compile_rows,
                                       "remat": remat_rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
