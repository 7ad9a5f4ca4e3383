"""`mylm pretrain` against nanoGPT, trained side by side on the same text, in one run.

    python scripts/bench_train.py                         # tinyshakespeare, 2000 steps (~10 min on 2 cores)
    python scripts/bench_train.py --iters 500             # shorter runs (all of them)
    python scripts/bench_train.py --corpus my.txt         # any text file
    python scripts/bench_train.py --skip-peer             # MyLM only (no ../shared/peers/nanogpt)

Runs, one after the other, each as its own subprocess:
  * nanoGPT (../shared/peers/nanogpt, unmodified): `train.py config/train_shakespeare_char.py` with its
    README's CPU line (--device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
    --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
    --dropout=0.0) plus --out_dir in the work directory and --always_save_checkpoint=False. Its data
    (train.bin / val.bin as uint16 char ids, meta.pkl with vocab_size / itos / stoi: the format of
    its data/shakespeare_char/prepare.py, val = the last 10%) is written into the work directory,
    with a copy of configurator.py, which train.py reads from its working directory.
  * `mylm pretrain` on configs/shakespeare_char_cpu.yaml (the same recipe, GPT-2 block) and
    configs/shakespeare_char_cpu_modern.yaml (RoPE / RMSNorm / SwiGLU, Muon, WSD), on one dataset
    prepared once from the same text: a byte-level tokenizer with no merges, val = the last 10%.

What it measures, per run: wall time of the whole subprocess (imports, data, model, compile, evals
and all); time to the first step (nanoGPT's `iter 0` line, MyLM's first metrics.jsonl record, each
stamped when it appears; MyLM starts from an empty compilation cache, as on a fresh machine, and
then once more, stopped after its first step: "2nd run: first step s"); the steady ms/step (the median per-step time of the run's second half,
evaluation steps left out); tokens/s from it; the val loss at the end; the wall-time ratio
nanoGPT / MyLM (> 1: MyLM finished sooner). Prints the table and the goals (GOAL_*: met or not),
writes them to --out (JSON) and a PNG of the val-loss curves against wall-clock seconds beside it.

Both frameworks use the machine's threads as they choose (no pinning); they never run at once. On a
shared machine single runs move by several per cent: compare runs of one invocation, not across.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax.fileio import atomic_write  # noqa: E402
from mylm_jax.studies.results import figure, markdown_table, save_figure  # noqa: E402

PEER = ROOT.parent / "shared" / "peers" / "nanogpt"
SHARED_TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
CONFIGS = ["configs/shakespeare_char_cpu.yaml", "configs/shakespeare_char_cpu_modern.yaml"]
RECIPE = dict(block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128, eval_interval=250, eval_iters=20,
              warmup_iters=100)
VOCAB = 263  # 256 bytes + the tokenizer's 7 specials: byte level, no merges
# The goals of this benchmark (issue 13), checked at the end of a run with the peer:
GOAL_RATIO = 1.43          # nanoGPT's recipe: MyLM's wall time <= 0.7x nanoGPT's ...
GOAL_VAL_MARGIN = 0.01     # ... at a val loss <= nanoGPT's + 0.01
GOAL_MODERN_VAL = 1.80     # the modern config: val <= 1.80 within nanoGPT's wall time
GOAL_SECOND_START_S = 5.0  # a second run's first step within 5 s
NANO_ITER = re.compile(r"^iter (\d+): loss ([-\d.naif]+), time ([\d.]+)ms")
NANO_EVAL = re.compile(r"^step (\d+): train loss ([-\d.naif]+), val loss ([-\d.naif]+)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="bench_train.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corpus", default=None, help="a text file (default: ../shared/data/tinyshakespeare.txt, "
                   "else the embedded tinyshakespeare)")
    p.add_argument("--iters", type=int, default=2000, help="training steps of every run")
    p.add_argument("--out", default="runs/bench_train/bench_train.json", help="the JSON; the PNG goes beside it")
    p.add_argument("--work-dir", default=None, help="data and run directories (default: <out's folder>/work)")
    p.add_argument("--skip-peer", action="store_true", help="do not run nanoGPT")
    p.add_argument("--peer", default=str(PEER), help="nanoGPT's directory")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), help="MyLM configs to run (none: nanoGPT only)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run before it is killed")
    p.add_argument("--allocator", choices=["auto", "jemalloc", "thp", "system"], default=None,
                   help="MYLM_ALLOCATOR for the MyLM runs (default: what `mylm` picks; thp = a fresh machine's "
                   "pick, system = glibc as it starts)")
    return p.parse_args(argv)


def schedule(iters: int) -> dict:
    """Eval interval and warmup for a run of `iters` steps: the recipe's, shrunk only for short smoke runs."""
    return {"eval_interval": min(RECIPE["eval_interval"], iters),
            "warmup_iters": RECIPE["warmup_iters"] if iters >= 2 * RECIPE["warmup_iters"] else max(1, iters // 10)}


# ----------------------------------------------------------------------------- running a subprocess

def run_stamped(cmd: list[str], cwd: Path, log_path: Path, timeout: float, watch: Path | None = None,
                env: dict | None = None, stop_at_first_step: bool = False) -> dict:
    """Run cmd; stamp every stdout line (and every new line of `watch`, polled) with seconds since the start.
    stop_at_first_step: SIGTERM the run once `watch` has its first step's record (a start-up measurement;
    the evaluation at step 0 comes before it)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            bufsize=1)
    lines: list[tuple[float, str]] = []

    def drain():
        with open(log_path, "w", encoding="utf-8", buffering=1) as log:  # line-buffered: tail -f works
            for line in proc.stdout:
                lines.append((time.perf_counter() - t0, line.rstrip("\n")))
                log.write(line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    records: list[tuple[float, dict]] = []
    offset, partial = 0, ""
    while True:
        done = proc.poll() is not None
        if watch is not None and watch.exists():
            with open(watch, encoding="utf-8") as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
            now = time.perf_counter() - t0
            partial += chunk
            *complete, partial = partial.split("\n")
            records += [(now, json.loads(s)) for s in complete if s.strip()]
        if done:
            break
        if stop_at_first_step and any("step_time_s" in rec for _, rec in records) and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # MyLM saves and exits 0 on SIGTERM
            stop_at_first_step = False
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    reader.join(timeout=10)
    return {"rc": proc.returncode, "wall_s": wall, "lines": lines, "records": records,
            "load_avg_1min": [load_start, os.getloadavg()[0]]}


def fail_run(name: str, result: dict, log_path: Path) -> None:
    tail = "\n".join(s for _, s in result["lines"][-15:])
    raise SystemExit(f"bench_train.py: {name} failed (exit {result['rc']}); log {log_path}:\n{tail}")


# ----------------------------------------------------------------------------- data

def read_corpus(path: str | None) -> tuple[Path, str]:
    if path is None:
        if SHARED_TEXT.exists():
            path = str(SHARED_TEXT)
        else:
            from mylm_jax.data.corpora import corpus_path
            path = str(corpus_path())
    p = Path(path).resolve()
    if not p.is_file():
        raise SystemExit(f"bench_train.py: --corpus {path}: no such file")
    return p, p.read_text(encoding="utf-8")


def prepare_nanogpt_data(text: str, peer: Path, work: Path) -> Path:
    """nanoGPT's working directory: data/shakespeare_char/{train,val}.bin + meta.pkl, configurator.py."""
    cwd = work / "nanogpt"
    data = cwd / "data" / "shakespeare_char"
    data.mkdir(parents=True, exist_ok=True)
    # The format of nanoGPT's data/shakespeare_char/prepare.py: sorted distinct chars, uint16 ids, 90/10.
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    n = len(text)
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    ids[: int(n * 0.9)].tofile(data / "train.bin")
    ids[int(n * 0.9):].tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    shutil.copy(peer / "configurator.py", cwd / "configurator.py")  # train.py exec()s it from its cwd
    return cwd


def prepare_mylm_data(corpus: Path, work: Path) -> Path:
    tok, data = work / "mylm" / "tokenizer.json", work / "mylm" / "data"
    mylm = [sys.executable, "-m", "mylm_jax"]
    steps = [mylm + ["tokenizer", "train", str(corpus), "--vocab-size", str(VOCAB), "--out", str(tok), "--quiet"],
             # --clean: the text as it is (no strip), as nanoGPT reads it
             mylm + ["data", "prepare", str(corpus), "--tokenizer", str(tok), "--out", str(data), "--split", "tail",
                     "--val-fraction", "0.1", "--no-eos", "--clean", "normalize_newlines,min_length=1", "--quiet"]]
    tok.parent.mkdir(parents=True, exist_ok=True)
    for cmd in steps:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"bench_train.py: {' '.join(cmd[3:5])} failed:\n{r.stdout}{r.stderr}")
    return data


# ----------------------------------------------------------------------------- the runs

def steady_ms(step_ms: dict[int, float], eval_interval: int) -> float | None:
    """Median ms of the second half's steps, leaving out the steps an evaluation or compile may sit in."""
    if not step_ms:
        return None
    last = max(step_ms)
    kept = [ms for s, ms in step_ms.items() if s > last // 2 and s % eval_interval not in (0, 1) and s > 2]
    kept = kept or [ms for s, ms in step_ms.items() if s > 2] or list(step_ms.values())
    return statistics.median(kept)


def run_nanogpt(peer: Path, cwd: Path, iters: int, timeout: float) -> dict:
    sched = schedule(iters)
    cmd = [sys.executable, "-u", str(peer / "train.py"), str(peer / "config" / "train_shakespeare_char.py"),
           "--device=cpu", "--compile=False", f"--eval_iters={RECIPE['eval_iters']}", "--log_interval=1",
           f"--block_size={RECIPE['block_size']}", f"--batch_size={RECIPE['batch_size']}",
           f"--n_layer={RECIPE['n_layer']}", f"--n_head={RECIPE['n_head']}", f"--n_embd={RECIPE['n_embd']}",
           f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--dropout=0.0",
           f"--eval_interval={sched['eval_interval']}", f"--warmup_iters={sched['warmup_iters']}",
           f"--out_dir={cwd / 'out'}", "--always_save_checkpoint=False"]
    log = cwd / "train.log"
    r = run_stamped(cmd, cwd, log, timeout)
    if r["rc"] != 0:
        fail_run("nanoGPT", r, log)
    step_ms, first, curve = {}, None, []
    for t, line in r["lines"]:
        if m := NANO_ITER.match(line):
            step_ms[int(m[1]) + 1] = float(m[3])  # iter i is step i + 1 (nanoGPT counts from 0)
            first = t if first is None else first
        elif m := NANO_EVAL.match(line):
            curve.append((t, int(m[1]), float(m[3])))
    return summarize("nanoGPT", r, first, step_ms, curve, sched["eval_interval"], " ".join(cmd), log)


def run_mylm(config: str, data: Path, work: Path, iters: int, timeout: float, allocator: str | None) -> dict:
    """`mylm pretrain` as a user runs it, from a cold compilation cache (a fresh machine's first run),
    then the same command again, stopped after its first step: the start of a second run."""
    sched = schedule(iters)
    name = "mylm " + Path(config).stem
    out = work / "mylm" / Path(config).stem
    cmd = [sys.executable, "-m", "mylm_jax", "pretrain", "--config", str(ROOT / config), "--overwrite",
           f"data.path={data}", f"train.out_dir={out}", f"train.steps={iters}",
           f"train.eval_every={sched['eval_interval']}", f"optim.warmup_steps={sched['warmup_iters']}"]
    cache = work / "mylm" / f"{Path(config).stem}.xla_cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {"MYLM_COMPILATION_CACHE": str(cache), **({"MYLM_ALLOCATOR": allocator} if allocator else {})}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    log = work / "mylm" / f"{Path(config).stem}.log"
    r = run_stamped(cmd, ROOT, log, timeout, watch=out / "metrics.jsonl", env=env)
    if r["rc"] != 0:
        fail_run(name, r, log)
    step_ms, first, curve = {}, None, []
    for t, rec in r["records"]:
        if "step_time_s" in rec:
            step_ms[rec["step"]] = rec["step_time_s"] * 1000
            first = t if first is None else first
        if "val_loss" in rec:
            curve.append((t, rec["step"], rec["val_loss"]))
    result = summarize(name, r, first, step_ms, curve, sched["eval_interval"], " ".join(cmd), log)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    again = run_stamped(cmd, ROOT, log.with_suffix(".second.log"), timeout, watch=out / "metrics.jsonl", env=env,
                        stop_at_first_step=True)
    if again["rc"] != 0:  # stopped by SIGTERM, a run saves and exits 0
        fail_run(name + " (second start)", again, log.with_suffix(".second.log"))
    result["second_run_first_step_s"] = next((t for t, rec in again["records"] if "step_time_s" in rec), None)
    return result


def summarize(name, r, first, step_ms, curve, eval_interval, cmd, log) -> dict:
    ms = steady_ms(step_ms, eval_interval)
    tokens = RECIPE["batch_size"] * RECIPE["block_size"]
    return {"name": name, "command": cmd, "log": str(log), "steps": max(step_ms, default=0),
            "wall_s": r["wall_s"], "first_step_s": first, "steady_ms_per_step": ms,
            "tokens_per_s": tokens / ms * 1000 if ms else None,
            "final_val_loss": curve[-1][2] if curve else None,
            "load_avg_1min_start_end": r["load_avg_1min"],  # other jobs on the machine while this ran
            "val_curve": [{"wall_s": t, "step": s, "val_loss": v} for t, s, v in curve]}


# ----------------------------------------------------------------------------- report

def conditions(choice: str | None = None) -> dict:
    import torch  # noqa: F401  (versions only; the runs import their own)
    import jax
    from mylm_jax import allocator
    choice = choice or os.environ.get(allocator.CHOICE, "auto")
    chosen = "system" if choice == "system" else allocator.plan(
        {allocator.CHOICE: choice}, allocator.find_jemalloc(), allocator.glibc_version(), allocator.thp_mode())[0]
    return {"cpus": os.cpu_count(), "load_avg_1_5_15": list(os.getloadavg()), "platform": platform.platform(),
            "mylm_allocator": chosen,
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "jax": jax.__version__, "torch": torch.__version__,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        rows.append([r["name"], round(r["wall_s"], 1), _r(r["first_step_s"], 1),
                     _r(r.get("second_run_first_step_s"), 1), _r(r["steady_ms_per_step"], 1),
                     _r(r["tokens_per_s"], 0), _r(r["final_val_loss"], 4), _r(r.get("wall_ratio_nanogpt_over"), 2),
                     "{:.1f} -> {:.1f}".format(*r["load_avg_1min_start_end"])])
    return markdown_table(["run", "wall s", "first step s", "2nd run: first step s", "steady ms/step", "tokens/s",
                           "val loss (end)",
                           "wall nanoGPT / this", "load avg (start -> end)"], rows)


def seconds_to(curve: list[dict], val: float) -> float | None:
    """Wall seconds at the first evaluation with val loss <= `val` (None: never)."""
    return next((p["wall_s"] for p in curve if p["val_loss"] <= val), None)


def goals(runs: list[dict], peer: dict | None) -> list[str]:
    """One line per goal and MyLM run: the figure, the goal, met or not."""
    def verdict(ok):
        return "met" if ok else "NOT met"
    lines = []
    for r in runs:
        if r is peer:
            continue
        second = r.get("second_run_first_step_s")
        lines.append(f"{r['name']}: a second run's first step {_r(second, 1)} s (goal <= {GOAL_SECOND_START_S:g}): "
                     f"{verdict(second is not None and second <= GOAL_SECOND_START_S)}")
        if peer is None:
            continue
        if "modern" in r["name"]:
            t = seconds_to(r["val_curve"], GOAL_MODERN_VAL)
            lines.append(f"{r['name']}: val <= {GOAL_MODERN_VAL} first at {_r(t, 1)} s, nanoGPT's run "
                         f"{peer['wall_s']:.1f} s: {verdict(t is not None and t <= peer['wall_s'])}")
        else:
            ratio, val, limit = r["wall_ratio_nanogpt_over"], r["final_val_loss"], peer["final_val_loss"]
            ok = ratio >= GOAL_RATIO and val is not None and limit is not None and val <= limit + GOAL_VAL_MARGIN
            lines.append(f"{r['name']}: wall nanoGPT / this {ratio:.2f} (goal >= {GOAL_RATIO}), val {_r(val, 4)} "
                         f"(goal <= {_r(limit, 4)} + {GOAL_VAL_MARGIN}): {verdict(ok)}")
    return lines


def _r(x, nd):
    return "-" if x is None else round(x, nd)


def plot(runs: list[dict], path: Path) -> None:
    fig, ax = figure(figsize=(7, 4.5))
    for r in runs:
        if r["val_curve"]:
            ax.plot([p["wall_s"] for p in r["val_curve"]], [p["val_loss"] for p in r["val_curve"]], "o-",
                    label=f"{r['name']} ({r['wall_s']:.0f} s)")
    ax.set_xlabel("wall-clock seconds since the process started")
    ax.set_ylabel("val loss (nats per char)")
    ax.set_title("mylm pretrain vs nanoGPT: val loss against wall time")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.iters < 1:
        raise SystemExit(f"bench_train.py: --iters must be >= 1, got {args.iters}")
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out.parent / "work"
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus, text = read_corpus(args.corpus)
    peer = Path(args.peer)
    run_peer = not args.skip_peer
    if run_peer and not (peer / "train.py").is_file():
        print(f"bench_train.py: nanoGPT not found at {peer}: running MyLM only (as with --skip-peer)")
        run_peer = False
    elif not run_peer:
        print("bench_train.py: --skip-peer: running MyLM only")
    cond_before = conditions(args.allocator)
    print(f"corpus {corpus} ({len(text):,} chars), {args.iters} steps per run, work dir {work}")
    print(f"machine: {cond_before['cpus']} CPUs, load average {cond_before['load_avg_1_5_15']}, "
          f"mylm's allocator: {cond_before['mylm_allocator']}")

    runs = []
    data = prepare_mylm_data(corpus, work)
    if run_peer:
        cwd = prepare_nanogpt_data(text, peer, work)
        print("running nanoGPT ...", flush=True)
        runs.append(run_nanogpt(peer, cwd, args.iters, args.timeout))
        print(f"  {runs[-1]['wall_s']:.1f} s", flush=True)
    for config in args.configs:
        print(f"running mylm pretrain --config {config} ...", flush=True)
        runs.append(run_mylm(config, data, work, args.iters, args.timeout, args.allocator))
        print(f"  {runs[-1]['wall_s']:.1f} s", flush=True)

    peer_run = runs[0] if run_peer else None
    for r in runs:
        r["wall_ratio_nanogpt_over"] = peer_run["wall_s"] / r["wall_s"] if peer_run else None
    report = table(runs)
    print()
    print(report)
    checks = goals(runs, peer_run)
    print("\ngoals:\n" + "\n".join("  " + line for line in checks))
    result = {"corpus": str(corpus), "corpus_chars": len(text), "iters": args.iters, "peer_ran": run_peer,
              "recipe": {**RECIPE, **schedule(args.iters)}, "conditions_before": cond_before,
              "conditions_after": {"load_avg_1_5_15": list(os.getloadavg())},
              "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "runs": runs, "table": report, "goals": checks}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(result, indent=2) + "\n")
    png = out.with_suffix(".png")
    plot(runs, png)
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
