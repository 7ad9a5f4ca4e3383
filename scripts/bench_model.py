"""Forward+backward throughput of the JAX model and its PyTorch twin on the same config.

    python scripts/bench_model.py                                  # reference config, float32
    python scripts/bench_model.py --config configs/moe_tiny.yaml model.n_layers=2
    python scripts/bench_model.py --allocator system               # one allocator only

One step = loss (token-mean cross-entropy) and the gradient of every parameter, no
optimizer. Both frameworks start from the same weights (converted) and run in one
process, one after the other in alternating rounds (never at once), so the machine's
noise hits both alike; the table reports medians and the JAX / torch tokens-per-second
ratio. MFU is achieved FLOP/s (accounting.flops_per_token x tokens/s) over a matmul
peak measured here: the best float32 matmul throughput of either framework on square
matrices.

Allocators (mylm_jax/allocator.py says why they matter): the measurement runs once per
allocator, each in its own child process started with that allocator's environment:

    system     what a fresh machine gives a Python process (glibc malloc as it starts)
    thp        what `mylm` starts itself with when jemalloc is absent (glibc + huge pages)
    jemalloc   what `mylm` starts itself with when libjemalloc.so.2 is installed

Torch runs under the same allocator as JAX in each child, so every ratio is fair; the
table puts the variants side by side. Allocators this machine lacks are reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax.config import ConfigError, load_config  # noqa: E402
from mylm_jax.model.accounting import flops_per_token  # noqa: E402

from mylm_jax import allocator as alloc  # noqa: E402
from mylm_jax.studies.results import markdown_table  # noqa: E402

ALLOCATORS = ("system", "thp", "jemalloc")


def allocator_env(name: str) -> dict | None:
    """The environment a child measuring `name` starts with (None: not available here)."""
    base = {k: v for k, v in os.environ.items() if k not in (alloc.APPLIED, alloc.CHOICE)}
    if name == "system":
        return {**base, alloc.CHOICE: "system"}
    chosen, changes, _ = alloc.plan({**base, alloc.CHOICE: name}, alloc.find_jemalloc(), alloc.glibc_version(),
                                    alloc.thp_mode())
    return {**base, **changes} if chosen == name else None


def time_calls(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------- matmul peak

def matmul_peak_gflops(size: int = 2048, reps: int = 5) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    ja = jnp.asarray(a)
    jmm = jax.jit(lambda x: x @ x)
    jmm(ja).block_until_ready()
    ta = torch.from_numpy(a)
    flops = 2 * size ** 3
    jax_best = min(time_calls(lambda: jmm(ja).block_until_ready(), reps))
    torch_best = min(time_calls(lambda: ta @ ta, reps))
    return {"jax": flops / jax_best / 1e9, "torch": flops / torch_best / 1e9}


# --------------------------------------------------------------------------- the two steps

def make_batch(cfg, B: int, T: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.model.vocab_size, (B, T + 1), dtype=np.int32)
    return tokens[:, :-1], tokens[:, 1:]


def jax_step(cfg, inputs, targets, seed: int):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mylm_jax.model.gpt import GPT
    from mylm_jax.train.loss import cross_entropy

    model = GPT(cfg.model, nnx.Rngs(seed))
    graphdef, params = nnx.split(model)

    @jax.jit
    def loss_and_grads(params, inputs, targets):
        def loss_fn(params):
            logits, _ = nnx.merge(graphdef, params)(inputs)
            return cross_entropy(logits, targets)
        return jax.value_and_grad(loss_fn)(params)

    inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)

    def step():
        loss, grads = loss_and_grads(params, inputs, targets)
        jax.block_until_ready(grads)
        return float(loss)

    return model, step


def torch_step(cfg, jax_model, inputs, targets):
    import torch
    import torch.nn.functional as F

    from mylm_jax.model.params import flat_params
    from mylm_torch.convert import jax_to_torch
    from mylm_torch.model import GPT

    model = GPT(cfg.model)
    model.load_state_dict(jax_to_torch(flat_params(jax_model), cfg.model))
    inputs, targets = torch.from_numpy(inputs).long(), torch.from_numpy(targets).long()

    def step():
        model.zero_grad(set_to_none=True)
        logits, _ = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        return loss.item()

    return step


# --------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/gpt2_tiny.yaml"))
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument("--rounds", type=int, default=5, help="alternating JAX/torch rounds")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per framework per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--allocator", choices=ALLOCATORS, action="append",
                        help="measure only these (repeatable); default: every one this machine has")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one measurement, this process
    parser.add_argument("--json", default="bench_model.json", help="where to write the results")
    args = parser.parse_args()
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        sys.exit(f"bench_model: error: {e}")
    if args.child:
        measure(cfg, args)
    else:
        compare_allocators(args)


def compare_allocators(args) -> None:
    """One child per allocator, one after the other; the table of all of them."""
    results, missing = {}, []
    for name in args.allocator or ALLOCATORS:
        env = allocator_env(name)
        if env is None:
            missing.append(name)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "child.json"
            argv = ["--config", args.config, *args.overrides, "--rounds", str(args.rounds), "--steps",
                    str(args.steps), "--warmup", str(args.warmup), "--child", "--json", str(out)]
            print(f"== allocator {name}", flush=True)
            subprocess.run([sys.executable, __file__, *argv], env=env, check=True)
            results[name] = json.loads(out.read_text())
    rows = [(name, f"{r['results']['jax']['ms_per_step']:.1f}", f"{r['results']['torch']['ms_per_step']:.1f}",
             f"{r['ratio_jax_over_torch']:.2f}x") for name, r in results.items()]
    print("\nside by side (system = a fresh machine's default; mylm uses jemalloc when installed, else thp):")
    print(markdown_table(["allocator", "JAX ms/step", "torch ms/step", "JAX / torch tokens/s"], rows))
    if missing:
        print(f"not available on this machine: {', '.join(missing)}")
    Path(args.json).write_text(json.dumps({"allocators": results, "not_available": missing}, indent=2))
    print(f"wrote {args.json}")


def measure(cfg, args) -> None:
    """The measurement, under whatever allocator this process started with."""
    allocator = os.environ.get(alloc.APPLIED) or os.environ.get(alloc.CHOICE, "system")

    import jax
    import torch

    B, T = cfg.train.batch_size, cfg.data.seq_len
    inputs, targets = make_batch(cfg, B, T)
    jax_model, run_jax = jax_step(cfg, inputs, targets, cfg.train.seed)
    run_torch = torch_step(cfg, jax_model, inputs, targets)
    loss_jax, loss_torch = run_jax(), run_torch()  # also compiles the JAX step
    for _ in range(args.warmup):
        run_jax(), run_torch()

    # Each round starts with one untimed step: the other framework's worker threads
    # keep spinning for a while after its last step (OpenMP's and Eigen's spin-wait)
    # and would steal a core from the first timed step.
    times = {"jax": [], "torch": []}
    for _ in range(args.rounds):
        for name, run in (("jax", run_jax), ("torch", run_torch)):
            run()
            times[name] += time_calls(run, args.steps)

    peak = matmul_peak_gflops()
    peak_gflops = max(peak.values())
    flops_tok = flops_per_token(cfg.model, T)
    rows = {}
    for name, ts in times.items():
        step_s = statistics.median(ts)
        tok_s = B * T / step_s
        rows[name] = {"ms_per_step": 1e3 * step_s, "tokens_per_s": tok_s,
                      "gflops": flops_tok * tok_s / 1e9, "mfu": flops_tok * tok_s / 1e9 / peak_gflops,
                      "ms_min": 1e3 * min(ts), "ms_max": 1e3 * max(ts)}
    ratio = rows["jax"]["tokens_per_s"] / rows["torch"]["tokens_per_s"]

    print(f"config {args.config} {' '.join(args.overrides)}: B={B} T={T} dtype={cfg.model.dtype}, "
          f"allocator={allocator}, jax {jax.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} cpus")
    print(f"loss at init: jax {loss_jax:.6f}  torch {loss_torch:.6f}")
    print(f"matmul peak (f32, 2048^3): jax {peak['jax']:.0f} GFLOP/s, torch {peak['torch']:.0f} GFLOP/s")
    print(f"{'framework':<10}{'ms/step':>10}{'(min-max)':>16}{'tokens/s':>11}{'GFLOP/s':>9}{'MFU':>7}")
    for name, r in rows.items():
        spread = f"({r['ms_min']:.0f}-{r['ms_max']:.0f})"
        print(f"{name:<10}{r['ms_per_step']:>10.1f}{spread:>16}{r['tokens_per_s']:>11.0f}"
              f"{r['gflops']:>9.1f}{r['mfu']:>7.1%}")
    print(f"JAX / torch tokens/s ratio: {ratio:.2f}x", flush=True)

    result = {"config": args.config, "overrides": args.overrides, "batch_size": B, "seq_len": T,
              "dtype": cfg.model.dtype, "allocator": allocator, "jax_version": jax.__version__,
              "torch_version": torch.__version__, "flops_per_token": flops_tok,
              "matmul_peak_gflops": peak, "loss_at_init": {"jax": loss_jax, "torch": loss_torch},
              "results": rows, "ratio_jax_over_torch": ratio}
    Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
