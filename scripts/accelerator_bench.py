"""GPT-2 124M training throughput on one accelerator: MyLM's variants and nanoGPT, side by side.

    python scripts/accelerator_bench.py --out runs/accelerator/bench.json      # on a GPU / TPU
    python scripts/accelerator_bench.py --dry-run                              # tiny, on CPU

scripts/accelerator_check.sh runs it (after the accelerator tests); docs/performance.md says
how to read it. Every measurement runs in its own subprocess (`--one NAME`), so the peak
memory and the compile time of one cannot leak into the next:

  * MyLM on configs/gpt2_124m.yaml (bfloat16 compute, T 1024, `--batch` sequences per step,
    random tokens), the whole training step (forward, backward, AdamW) as `mylm pretrain`
    compiles it (`make_train_steps`, `--k` steps per call), in four variants:
        unrolled, scanned (model.scan_layers, when the schema has it), and each with model.fp8.
    Per variant: compile time (lower + compile of the step, the persistent cache off),
    tokens/s over `--calls` timed calls after one warm-up call, MFU = 6N + attention FLOPs
    per token (mylm_jax/model/accounting.py) x tokens/s / the device's dense bf16 peak
    (mylm_jax/train/metrics.py; the FP8 variants are measured against the same bf16 peak),
    the device's peak bytes in use (runtime allocator; on CPU the compiled step's memory
    analysis instead), and the loss after the timed steps (a sanity check: finite, falling).
  * nanoGPT (../shared/peers/nanogpt, run unmodified from where it is; its configurator.py is
    linked, not copied, into a work directory) with --compile=True (torch.compile), the same
    model shape, batch, T and vocabulary (its meta.pkl), bf16, random tokens: ms/iter is the median
    of the iterations after the first five (its own `iter` lines), compile time is the time to
    its first iteration, peak memory torch.cuda.max_memory_allocated (read by the wrapper that
    runs its train.py).

--dry-run: the same recipe shrunk (d 64, 2 layers, vocab 512, T 32), nanoGPT with --device=cpu
--compile=False: checks the whole path (and the JSON) on CPU in about a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax.fileio import atomic_write  # noqa: E402

PEERS = [ROOT / "shared" / "peers" / "nanogpt", ROOT.parent / "shared" / "peers" / "nanogpt"]
CONFIG = "configs/gpt2_124m.yaml"
FULL = dict(T=1024, batch=16, k=5, calls=4, model={})
# The dry run: the same recipe shrunk until it compiles in seconds on CPU.
DRY = dict(T=32, batch=4, k=2, calls=2, model=dict(vocab_size=512, d_model=64, n_layers=2, n_heads=2))
VARIANTS = {  # name -> model overrides
    "unrolled": {},
    "scanned": {"scan_layers": True},
    "unrolled_fp8": {"fp8": True},
    "scanned_fp8": {"scan_layers": True, "fp8": True},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny config on CPU: checks the path, measures nothing")
    p.add_argument("--out", default="runs/accelerator/bench.json")
    p.add_argument("--work", default="runs/accelerator/work")
    p.add_argument("--only", default="", help="comma-separated: variant names and/or nanogpt")
    p.add_argument("--batch", type=int, help="sequences per step (default 16; dry run 4)")
    p.add_argument("--timeout", type=float, default=150, help="seconds per measurement subprocess (5 of them)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one MyLM variant, print its JSON
    return p.parse_args(argv)


def sizes(args) -> dict:
    s = dict(DRY if args.dry_run else FULL)
    if args.batch:
        s["batch"] = args.batch
    return s


def has_scan_layers() -> bool:
    from mylm_jax.config import ModelConfig
    return "scan_layers" in {f.name for f in dataclasses.fields(ModelConfig)}


def bench_config(args, variant: str):
    import yaml

    from mylm_jax.config import config_from_dict
    s = sizes(args)
    raw = yaml.safe_load((ROOT / CONFIG).read_text())
    raw["model"].update(dtype="bfloat16", max_seq_len=max(raw["model"].get("max_seq_len", 0), s["T"]),
                        **s["model"], **VARIANTS[variant])
    raw["data"] = {"seq_len": s["T"]}
    raw["train"] = {"batch_size": s["batch"], "microbatches": 1, "steps": 1000, "steps_per_call": s["k"]}
    raw["optim"] = {**raw.get("optim", {}), "warmup_steps": 10}
    return config_from_dict(raw)


def measure_mylm(args, variant: str) -> dict:
    """One variant, in this process: compile time, tokens/s, MFU, peak memory, loss."""
    import jax

    from mylm_jax.model.accounting import flops_per_token, param_count
    from mylm_jax.parallel import make_mesh
    from mylm_jax.train.metrics import peak_flops_per_device
    from mylm_jax.train.state import create_state
    from mylm_jax.train.step import make_train_steps

    s = sizes(args)
    cfg = bench_config(args, variant)
    K, B, T, V = s["k"], s["batch"], s["T"], cfg.model.vocab_size
    ts = create_state(cfg, make_mesh(cfg.mesh))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, (K, B, T + 1), dtype=np.int32)
    batch = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "loss_mask": np.ones((K, B, T), np.float32),
             "segment_ids": np.ones((K, B, T), np.int32),
             "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (K, B, T)).copy()}
    batch = jax.device_put(batch)  # on the device once: the timed calls measure the step, not the copy
    active = np.ones(K, bool)
    t0 = time.perf_counter()
    compiled = make_train_steps(cfg, ts, K).lower(ts.state, batch, active, False).compile()
    compile_s = time.perf_counter() - t0
    analysis = compiled.memory_analysis()
    state, metrics, _ = compiled(ts.state, batch, active, False)  # warm-up call
    first_loss = float(np.asarray(metrics["loss"])[0])
    jax.block_until_ready(state)
    times = []
    for _ in range(s["calls"]):
        t0 = time.perf_counter()
        state, metrics, _ = compiled(state, batch, active, False)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    call_s = statistics.median(times)
    tokens_per_s = K * B * T / call_s
    flops = flops_per_token(cfg.model, T)
    peak = peak_flops_per_device(0.0)
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "framework": "mylm", "variant": variant, "model": dataclasses.asdict(cfg.model), "params": param_count(cfg.model),
        "batch": B, "seq_len": T, "steps_per_call": K, "compile_s": compile_s, "ms_per_step": 1e3 * call_s / K,
        "tokens_per_s": tokens_per_s, "flops_per_token": flops,
        "mfu": tokens_per_s * flops / peak if peak else None, "peak_tflops_bf16": peak / 1e12 if peak else None,
        "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
        "compiled_temp_bytes": getattr(analysis, "temp_size_in_bytes", None),
        "compiled_argument_bytes": getattr(analysis, "argument_size_in_bytes", None),
        "loss_first": first_loss, "loss_last": float(np.asarray(metrics["loss"])[-1]),
        "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
        "jax": jax.__version__,
    }


def run_one(args, variant: str) -> dict:
    """measure_mylm in a fresh subprocess (its own allocator peak and compile)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", variant, "--timeout", str(args.timeout)]
    cmd += ["--dry-run"] if args.dry_run else []
    cmd += ["--batch", str(args.batch)] if args.batch else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_ENABLE_COMPILATION_CACHE": "false"}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"framework": "mylm", "variant": variant, "error": f"timed out after {args.timeout:.0f} s"}
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"framework": "mylm", "variant": variant, "error": (r.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- nanoGPT

NANOGPT_WRAPPER = """
import runpy, sys, time, json
peer, args = sys.argv[1], sys.argv[2:]
sys.path.insert(0, peer)
sys.argv = [peer + "/train.py"] + args
print(json.dumps({"start": time.time()}), flush=True)
runpy.run_path(peer + "/train.py", run_name="__main__")
import torch
peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
print(json.dumps({"peak_bytes": peak, "torch": torch.__version__}), flush=True)
"""


def find_peer() -> Path | None:
    return next((p for p in PEERS if (p / "train.py").is_file()), None)


def nanogpt_args(args, model_cfg) -> list[str]:
    s = sizes(args)
    on_gpu = not args.dry_run
    return ["--dataset=bench", f"--batch_size={s['batch']}", f"--block_size={s['T']}",
            f"--n_layer={model_cfg['n_layers']}", f"--n_head={model_cfg['n_heads']}", f"--n_embd={model_cfg['d_model']}",
            f"--bias={model_cfg['bias']}", "--dropout=0.0", "--gradient_accumulation_steps=1",
            f"--max_iters={5 + 2 * s['k'] * s['calls']}", "--eval_interval=1000000", "--eval_iters=1",
            "--log_interval=1", "--always_save_checkpoint=False", "--init_from=scratch",
            f"--device={'cuda' if on_gpu else 'cpu'}", f"--dtype={'bfloat16' if on_gpu else 'float32'}",
            f"--compile={on_gpu}", "--out_dir=out"]


def measure_nanogpt(args, model_cfg: dict, flops: float, peak: float | None) -> dict:
    peer = find_peer()
    if peer is None:
        return {"framework": "nanogpt", "error": f"not found at {' or '.join(map(str, PEERS))}"}
    s = sizes(args)
    work = (ROOT / args.work / "nanogpt").resolve()
    data = work / "data" / "bench"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)  # random tokens of the same vocabulary; meta.pkl gives nanoGPT its size
    V = model_cfg["vocab_size"]
    for split in ("train", "val"):
        rng.integers(0, V, 2_000_000 if not args.dry_run else 50_000, dtype=np.uint16).tofile(data / f"{split}.bin")
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": V}, f)
    link = work / "configurator.py"  # train.py exec()s it from its working directory: linked, not copied
    if not link.exists():
        link.symlink_to(peer / "configurator.py")
    cmd = [sys.executable, "-c", NANOGPT_WRAPPER, str(peer), *nanogpt_args(args, model_cfg)]
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"framework": "nanogpt", "error": f"timed out after {args.timeout:.0f} s"}
    if r.returncode != 0:
        return {"framework": "nanogpt", "error": (r.stderr.strip().splitlines() or ["?"])[-1][:300]}
    iters = [(int(m[1]), float(m[2]), float(m[3])) for m in
             re.finditer(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms", r.stdout, re.M)]
    first_iter = re.search(r"^iter 0:", r.stdout, re.M)
    info = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    start = info[0]["start"] if info else t0
    steady = [ms for i, _, ms in iters if i >= 5] or [ms for _, _, ms in iters]
    ms = statistics.median(steady)
    tokens_per_s = s["batch"] * s["T"] / (ms / 1e3)
    return {"framework": "nanogpt", "variant": "torch.compile" if not args.dry_run else "eager (dry run)",
            "batch": s["batch"], "seq_len": s["T"], "ms_per_step": ms, "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops / peak if peak else None,
            # iter 0's time includes torch.compile's first compilation (and the first eval)
            "compile_s": iters[0][2] / 1e3 if iters and first_iter else None,
            "wall_s": time.time() - start, "peak_bytes_in_use": info[-1].get("peak_bytes") if info else None,
            "loss_first": iters[0][1] if iters else None, "loss_last": iters[-1][1] if iters else None,
            "torch": info[-1].get("torch") if info else None, "peer": str(peer), "args": nanogpt_args(args, model_cfg)}


# --------------------------------------------------------------------------- report

def table(results: list[dict]) -> str:
    head = f"{'run':<22}{'tokens/s':>12}{'MFU':>8}{'ms/step':>10}{'compile s':>11}{'peak GiB':>10}{'loss':>16}"
    lines = [head, "-" * len(head)]
    for r in results:
        name = f"{r['framework']}:{r.get('variant', '')}"
        if "error" in r:
            lines.append(f"{name:<22}  {r['error']}")
            continue
        gib = r.get("peak_bytes_in_use") or r.get("compiled_temp_bytes")
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"  # no peak known (CPU)
        lines.append(f"{name:<22}{r['tokens_per_s']:>12,.0f}{mfu:>8}{r['ms_per_step']:>10.1f}"
                     f"{(r['compile_s'] or 0):>11.1f}{(gib or 0) / 2**30:>10.3f}"
                     f"{r['loss_first']:>8.3f}{r['loss_last']:>8.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure_mylm(args, args.one)))
        return 0
    names = [n for n in args.only.split(",") if n] or [*VARIANTS, "nanogpt"]
    unknown = [n for n in names if n not in VARIANTS and n != "nanogpt"]
    if unknown:
        raise SystemExit(f"accelerator_bench.py: --only: unknown {unknown[0]!r}; known: {', '.join(VARIANTS)}, nanogpt")
    results = []
    scan = has_scan_layers()
    for name in (n for n in names if n in VARIANTS):
        if "scan_layers" in VARIANTS[name] and not scan:
            results.append({"framework": "mylm", "variant": name, "error": "model.scan_layers is not in the schema"})
        else:
            results.append(run_one(args, name))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    ok = [r for r in results if "error" not in r]
    if "nanogpt" in names:
        model = ok[0]["model"] if ok else dataclasses.asdict(bench_config(args, "unrolled").model)
        flops = ok[0]["flops_per_token"] if ok else None
        peak = (ok[0]["peak_tflops_bf16"] or 0) * 1e12 if ok else None
        results.append(measure_nanogpt(args, model, flops or 0.0, peak or None))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    report = {"dry_run": args.dry_run, "sizes": sizes(args), "host": platform.node(), "results": results,
              "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(report, indent=1))
    print(table(results))
    print(f"wrote {out}")
    return 0 if ok and all("error" not in r for r in results if r["framework"] == "mylm"
                           and "scan_layers is not" not in r.get("error", "")) else 1


if __name__ == "__main__":
    sys.exit(main())
