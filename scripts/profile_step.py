"""Where a training step's time goes: the compiled step, its parts, and a per-op profile.

    python scripts/profile_step.py                                   # nanoGPT's CPU recipe
    python scripts/profile_step.py --config configs/shakespeare_char_cpu_modern.yaml
    python scripts/profile_step.py model.dtype=bfloat16 --top 30     # any config override
    MYLM_ALLOCATOR=system python scripts/profile_step.py train.steps_per_call=1   # as before this issue

Builds the state of a config exactly as `mylm pretrain` does (create_state, make_train_step),
feeds it random tokens of the config's shape (no data needed) and measures, each as the median
of --steps calls after a warm-up, run back to back:

    train_step      the jitted optimizer steps `mylm pretrain` runs, K = train.steps_per_call
                    per call (make_train_steps); the time is per optimizer step
    forward         the model's loss alone
    fwd+bwd         loss and gradients, no optimizer
    placement       shard_batch: one host batch onto the mesh

and then a per-op profile of the train step (jax.profiler trace, events summed by op name
with trailing numbers stripped): the time a step spends in each kind of XLA kernel, which
tells matmuls (`ynn_fusion`, `dot`) from the elementwise and layout kernels around them.
Prints tables and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax import allocator  # noqa: E402

# Measure what `mylm pretrain` runs with: the same allocator choice (MYLM_ALLOCATOR=system
# for a fresh machine's default; mylm_jax/allocator.py).
allocator.reexec_with_fast_allocator()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mylm_jax.config import load_config  # noqa: E402
from mylm_jax.fileio import atomic_write  # noqa: E402
from mylm_jax.parallel import make_mesh, shard_batch  # noqa: E402
from mylm_jax.studies.results import markdown_table  # noqa: E402
from mylm_jax.train.loss import loss_weights, objective  # noqa: E402
from mylm_jax.train.state import create_state  # noqa: E402
from mylm_jax.train.step import make_train_steps  # noqa: E402


def random_batch(cfg, rng) -> dict:
    """One host batch [K * B, T] of random tokens (K = steps per call), shaped as the loader's."""
    B = cfg.train.batch_size * cfg.train.steps_per_call
    T = cfg.data.seq_len
    inputs = rng.integers(0, cfg.model.vocab_size, (B, T)).astype(np.int32)
    return {"inputs": inputs, "targets": np.roll(inputs, -1, axis=1), "loss_mask": np.ones((B, T), np.float32),
            "segment_ids": np.ones((B, T), np.int32), "positions": np.broadcast_to(np.arange(T), (B, T)).astype(np.int32)}


def median_ms(fn, steps: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def op_profile(fn, steps: int, directory: str) -> dict[str, tuple[float, int]]:
    """{op kind: (ms per call of fn, kernels per call)} from a jax.profiler trace of `steps` calls."""
    jax.block_until_ready(fn())
    jax.profiler.start_trace(directory, create_perfetto_trace=True)
    for _ in range(steps):
        jax.block_until_ready(fn())
    jax.profiler.stop_trace()
    trace = sorted(Path(directory).rglob("*.trace.json.gz"))[-1]
    events = json.load(gzip.open(trace))["traceEvents"]
    # Only the XLA kernels: the thunk events of the compiled program carry an hlo_op argument.
    totals: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") == "X" and "hlo_op" in e.get("args", {}):
            kind = re.sub(r"[.\d]+$", "", e["name"])
            totals[kind][0] += e["dur"] / 1e3 / steps
            totals[kind][1] += 1 / steps
    return {k: (v[0], round(v[1])) for k, v in sorted(totals.items(), key=lambda kv: -kv[1][0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shakespeare_char_cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--steps", type=int, default=30, help="timed calls per measurement")
    parser.add_argument("--top", type=int, default=20, help="op kinds shown")
    parser.add_argument("--out", default="runs/profile_step.json")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides)
    K = cfg.train.steps_per_call
    mesh = make_mesh(cfg.mesh)
    ts = create_state(cfg, mesh)
    train_steps = make_train_steps(cfg, ts, K)
    host = random_batch(cfg, np.random.default_rng(0))  # K batches' rows, one after the other
    batch, active = shard_batch(host, mesh, cfg.train.microbatches * K), np.ones(K, bool)
    state = {"s": ts.state}

    def run_train_step():
        state["s"], metrics, _ = train_steps(state["s"], batch, active, False)
        return metrics

    model_def, params, rest = nnx.split(ts.models()[0], nnx.Param, ...)
    host_one = {k: v[: cfg.train.batch_size] for k, v in host.items()}  # one optimizer step's rows
    one = {k: v[0] for k, v in shard_batch(host_one, mesh).items()}
    weights, n_tokens = loss_weights(cfg.loss), float(one["loss_mask"].size)

    def loss_fn(params):
        outputs = nnx.merge(model_def, params, rest)(one["inputs"], one["segment_ids"], one["positions"])
        return objective(outputs, one, weights, n_tokens, 1)[0]

    forward = jax.jit(loss_fn)
    fwd_bwd = jax.jit(jax.value_and_grad(loss_fn))
    # (the train step donates the state, so it runs last)
    rows = [("forward", median_ms(lambda: forward(params), args.steps)),
            ("fwd+bwd", median_ms(lambda: fwd_bwd(params), args.steps)),
            ("train_step (per optimizer step)", median_ms(run_train_step, args.steps) / K),
            ("placement (shard_batch)", median_ms(lambda: shard_batch(host_one, mesh), args.steps))]
    used = os.environ.get(allocator.APPLIED) or "system"
    print(f"{args.config} {' '.join(args.overrides)}  ({jax.devices()[0].platform}, {jax.device_count()} device(s), "
          f"allocator {used}, {K} step(s) per call)")
    print(markdown_table(["part", "ms"], [(name, f"{ms:.2f}") for name, ms in rows]))

    with tempfile.TemporaryDirectory() as directory:
        ops = op_profile(run_train_step, max(5, args.steps // 3), directory)
    total = sum(ms for ms, _ in ops.values())
    print(f"\nper-op profile of train_step: {total / K:.1f} ms of kernels per optimizer step")
    print(markdown_table(["op kind", "ms / step", "share", "kernels / step"],
                         [(k, f"{ms / K:.2f}", f"{ms / total:.0%}", f"{n / K:.0f}")
                          for k, (ms, n) in list(ops.items())[: args.top]]))
    result = {"config": args.config, "overrides": args.overrides, "allocator": used, "parts_ms": dict(rows),
              "ops_ms_per_step": {k: ms / K for k, (ms, _) in ops.items()}, "kernels_ms_per_step": total / K}
    atomic_write(Path(args.out), json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
