"""JAX vs the PyTorch twin, trained side by side: same config, same initial weights
(converted with mylm_torch/convert.py), the same batches in the same order.

    python scripts/compare_frameworks.py [--steps 200] [--variant modern] [--optimizer adamw|muon]
        [--d-model 128 --layers 4 --batch 8 --seq-len 128] [--out runs/studies/compare_frameworks]

What it measures, and why:
  * the per-step loss difference |loss_jax - loss_torch| (max and final): the parity suite
    checks 50 steps at a toy size; this shows how far float32 rounding differences grow
    over a real run on real text (each update depends on the last, so they compound);
  * the noise floor beside that gap: each framework against itself, started from the
    same weights moved by one float32 ulp (np.nextafter). Rounding-only changes grow the
    same way, so a cross-framework gap near the floor is rounding chaos, one far above it
    a difference in the math (results.json: noise_floor_jax, noise_floor_torch);
  * tokens/s of each (steps 2..N, every step's loss read back, so both sides wait for the
    device equally; JAX's first step compiles and is left out) and their ratio;
  * peak memory: on an accelerator JAX's device `peak_bytes_in_use`; on CPU, and for torch,
    the growth of the process's peak RSS (getrusage) while training. Each framework
    trains in its own child process, so one's memory does not hide the other's.

JAX runs the project's jitted, state-donating step (mylm_jax/train/step.py); the twin runs
TwinOptimizer (clipping, AdamW / Muon, schedules) as parity_tests/test_training.py does.
Matmuls run at full float32 precision on both sides (TF32 off on GPU), so differences
are rounding, not precision. Writes results.json, report.md and frameworks_loss.png.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax.config import ConfigError  # noqa: E402
from mylm_jax.studies.datasets import draw_batches, prepare_dataset, study_config  # noqa: E402
from mylm_jax.studies.results import figure, markdown_table, save_figure, write_results  # noqa: E402
from mylm_jax.studies.script import StudyError, add_study_args, fail, peak_rss_mb, with_overrides  # noqa: E402
from mylm_jax.variants import STUDY_VARIANTS, variant_model  # noqa: E402

PROG = "compare_frameworks.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--variant", default="modern", help=f"one of {', '.join(STUDY_VARIANTS)}")
    p.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw")
    add_study_args(p, "compare_frameworks", d_model=128, layers=4, seq_len=128)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_config(args, data_path: str):
    if args.steps < 2:
        raise StudyError(f"--steps must be >= 2, got {args.steps}")
    model = variant_model(args.variant, args.d_model, args.layers, args.heads)
    optim = {"name": args.optimizer, "lr": args.lr, "warmup_steps": max(1, args.steps // 20)}
    train = {"steps": args.steps, "batch_size": args.batch, "seed": args.seed}
    return study_config(data_path, Path(args.out) / "run", model, optim, train, seq_len=args.seq_len)


def train_jax(cfg, batches, weights, queue) -> None:
    """The project's own path (create_state + make_train_steps, train.steps_per_call steps per
    call, as `mylm pretrain`); weights: start from these instead of the config's
    initialisation (the noise-floor run). The first call (it compiles) is not timed."""
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from flax import nnx

    from mylm_jax.model.params import flat_params, load_flat_params
    from mylm_jax.parallel import make_mesh, shard_batch
    from mylm_jax.train.state import create_state
    from mylm_jax.train.step import k_step_batch, make_train_steps

    mesh = make_mesh(cfg.mesh)
    ts = create_state(cfg, mesh)
    if weights is not None:
        model, optimizer = ts.models()
        load_flat_params(model, weights)
        ts.state = jax.device_put(nnx.state((model, optimizer)), ts.shardings)
    initial = flat_params(ts.models()[0])  # a copy (numpy) before the first step donates the state
    n = len(batches["inputs"])
    K = min(cfg.train.steps_per_call, max(1, n // 4))  # short runs: smaller calls, so some are timed
    steps = make_train_steps(cfg, ts, K)
    state, losses, start, rss0 = ts.state, [], 0.0, peak_rss_mb()
    for first in range(0, n, K):
        if first == K:
            start = time.perf_counter()
        host, active = k_step_batch([{k: v[i] for k, v in batches.items()} for i in range(first, min(first + K, n))], K)
        state, metrics, _ = steps(state, shard_batch(host, mesh, K), active, False)
        losses += [float(x) for x in jax.device_get(metrics["loss"])[:int(active.sum())]]
    elapsed = time.perf_counter() - start
    stats = jax.devices()[0].memory_stats() or {}
    memory = ({"peak_mb": stats["peak_bytes_in_use"] / 2**20, "how": f"{jax.devices()[0].platform} peak_bytes_in_use"}
              if "peak_bytes_in_use" in stats else
              {"peak_mb": peak_rss_mb() - rss0, "how": "growth of process peak RSS (getrusage) while training"})
    queue.put({"losses": losses, "time_s": elapsed, "timed_steps": max(n - K, 0), "memory": memory, "initial": initial,
               "device": jax.devices()[0].device_kind})


def train_torch(cfg, batches, initial, queue) -> None:
    import torch

    from mylm_torch.convert import jax_to_torch
    from mylm_torch.loss import loss_weights, objective
    from mylm_torch.model import GPT as TorchGPT
    from mylm_torch.optim import TwinOptimizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    m = cfg.model
    model = TorchGPT(m)
    model.load_state_dict(jax_to_torch(initial, m), strict=True)
    model.to(device)
    optimizer, weights = TwinOptimizer(model, cfg.optim, cfg.train.steps), loss_weights(cfg.loss)
    data = {k: torch.from_numpy(v).to(device) for k, v in batches.items()}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, start, rss0 = [], 0.0, peak_rss_mb()
    for i in range(len(batches["inputs"])):
        if i == 1:
            start = time.perf_counter()
        optimizer.zero_grad()
        logits, aux = model(data["inputs"][i], data["segment_ids"][i], data["positions"][i])
        n_tokens = data["loss_mask"][i].sum().clamp(min=1.0)
        # the objective of mylm_jax/train/loss.py (one microbatch), in the twin's words
        value, loss_sum = objective(logits, aux, data["targets"][i], data["loss_mask"][i], weights, n_tokens)
        value.backward()
        optimizer.step()
        losses.append((loss_sum / n_tokens).item())
    elapsed = time.perf_counter() - start
    memory = ({"peak_mb": torch.cuda.max_memory_allocated() / 2**20, "how": "torch.cuda.max_memory_allocated"}
              if device == "cuda" else
              {"peak_mb": peak_rss_mb() - rss0, "how": "growth of process peak RSS (getrusage) while training"})
    queue.put({"losses": losses, "time_s": elapsed, "timed_steps": len(losses) - 1, "memory": memory, "device": device,
               "threads": torch.get_num_threads()})


def in_child(target, *args):
    """Run target(*args, queue) in a fresh process (spawn: no state shared) and return its result."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def report(args, cfg, results) -> str:
    r = results
    rows = [[fw, f"{r[fw]['tokens_per_s']:,.0f}", f"{r[fw]['memory']['peak_mb']:.0f} MB ({r[fw]['memory']['how']})",
             f"{r[fw]['losses'][-1]:.4f}"] for fw in ("jax", "torch")]
    return (f"# JAX vs PyTorch twin: {args.variant}, {args.optimizer}, {args.steps} steps\n\n"
            f"`python scripts/compare_frameworks.py {' '.join(sys.argv[1:])}`\n\n"
            f"Model d_model={cfg.model.d_model}, {cfg.model.n_layers} layers, {r['params']:,} parameters; "
            f"batch {cfg.train.batch_size} x {cfg.data.seq_len} tokens; JAX device {r['jax']['device']}, "
            f"torch device {r['torch']['device']}.\n\n"
            f"* max |loss_jax - loss_torch| over the steps: **{r['max_loss_diff']:.2e}** "
            f"(step {r['max_loss_diff_step']}); final: **{r['final_loss_diff']:.2e}**\n"
            f"* noise floor, each framework against itself from weights moved by one ulp: JAX max "
            f"{r['noise_floor_jax']['max']:.2e} (final {r['noise_floor_jax']['final']:.2e}), twin max "
            f"{r['noise_floor_torch']['max']:.2e} (final {r['noise_floor_torch']['final']:.2e})\n"
            f"* tokens/s ratio JAX / torch: **{r['tokens_per_s_ratio']:.2f}**\n\n"
            + markdown_table(["framework", "tokens/s", "peak memory", "final loss"], rows)
            + "\n![loss curves](frameworks_loss.png)\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        variant_model(args.variant)
        data_path = prepare_dataset(args.data, args.vocab, args.cache, args.max_chars)
        cfg = with_overrides(build_config(args, data_path), args.overrides)
    except ConfigError as e:
        fail(PROG, str(e))
    from mylm_jax.model.accounting import param_count
    batches = draw_batches(cfg, args.steps)
    print(f"training {args.variant} / {args.optimizer} for {args.steps} steps in JAX ...", flush=True)
    jax_result = in_child(train_jax, cfg, batches, None)
    initial = jax_result.pop("initial")
    print("... and in the PyTorch twin", flush=True)
    torch_result = in_child(train_torch, cfg, batches, initial)
    # The floor: every weight moved by one float32 ulp, nothing else changed.
    nudged = {k: np.nextafter(v, np.float32(np.inf)).astype(np.float32) for k, v in initial.items()}
    print("... and each again from the weights moved by one ulp (the noise floor)", flush=True)
    jax_floor = in_child(train_jax, cfg, batches, nudged)["losses"]
    torch_floor = in_child(train_torch, cfg, batches, nudged)["losses"]
    floor_jax = np.abs(np.array(jax_floor) - np.array(jax_result["losses"]))
    floor_torch = np.abs(np.array(torch_floor) - np.array(torch_result["losses"]))
    for r in (jax_result, torch_result):  # each side's untimed start: its first step or call
        r["tokens_per_s"] = r["timed_steps"] * args.batch * args.seq_len / r["time_s"]
    diff = np.abs(np.array(jax_result["losses"]) - np.array(torch_result["losses"]))
    results = {"variant": args.variant, "optimizer": args.optimizer, "steps": args.steps,
               "batch_size": args.batch, "seq_len": args.seq_len, "d_model": args.d_model, "n_layers": args.layers,
               "params": param_count(cfg.model), "jax": jax_result, "torch": torch_result,
               "loss_diff": diff, "max_loss_diff": float(diff.max()), "max_loss_diff_step": int(diff.argmax()) + 1,
               "final_loss_diff": float(diff[-1]),
               "noise_floor_jax": {"max": float(floor_jax.max()), "final": float(floor_jax[-1]), "per_step": floor_jax},
               "noise_floor_torch": {"max": float(floor_torch.max()), "final": float(floor_torch[-1]),
                                     "per_step": floor_torch},
               "tokens_per_s_ratio": jax_result["tokens_per_s"] / torch_result["tokens_per_s"]}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = figure(2, 1, figsize=(7, 6), sharex=True)
    steps = np.arange(1, args.steps + 1)
    ax1.plot(steps, jax_result["losses"], label="JAX")
    ax1.plot(steps, torch_result["losses"], ls="--", label="PyTorch twin")
    ax1.set(ylabel="training loss", title=f"{args.variant}, {args.optimizer}: same weights, same batches")
    ax1.legend()
    ax2.semilogy(steps, np.maximum(diff, 1e-12), label="JAX vs twin")
    ax2.semilogy(steps, np.maximum(floor_jax, 1e-12), lw=0.8, label="floor: JAX vs JAX (1 ulp)")
    ax2.semilogy(steps, np.maximum(floor_torch, 1e-12), lw=0.8, ls="--", label="floor: twin vs twin (1 ulp)")
    ax2.set(xlabel="step", ylabel="|loss difference|")
    ax2.legend()
    save_figure(fig, out / "frameworks_loss.png")
    write_results(out, results, report(args, cfg, results))
    print(f"max loss diff {results['max_loss_diff']:.2e}, final {results['final_loss_diff']:.2e} (noise floor: "
          f"JAX {floor_jax.max():.2e}, twin {floor_torch.max():.2e}); tokens/s "
          f"JAX {jax_result['tokens_per_s']:,.0f}, torch {torch_result['tokens_per_s']:,.0f} "
          f"(ratio {results['tokens_per_s_ratio']:.2f}); written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
