"""Loss curves of the precision options against float32, on one tiny model, side by side.

    python scripts/compare_precision.py                 # 400 steps per run, ~6 min on 2 cores
    python scripts/compare_precision.py --steps 100     # shorter
    python scripts/compare_precision.py --only float32,bf16_params

Each run is `mylm pretrain` (a subprocess) on configs/shakespeare_char_cpu.yaml's recipe
(GPT-2 block, d 128, 4 layers, T 64, AdamW beta2 0.99) on the embedded tinyshakespeare
corpus, byte-level tokens, with one precision setting changed (the `RUNS` table):

    float32          the reference: float32 parameters, moments and compute
    float32_seed1    the same with another init and data order: the run-to-run spread
    bf16_compute     model.dtype=bfloat16 (matmul inputs; float32 master weights and moments)
    bf16_moments     optim.moment_dtype=bfloat16
    bf16_params      model.param_dtype=bfloat16 (no float32 master copy)
    bf16_all         all three: bfloat16 parameters, moments and compute
    fp8              model.fp8 with bfloat16 compute (mylm_jax/model/fp8.py)
    *_b2_999         float32 / bf16_moments with beta2 = 0.999 (where bfloat16 v can stall)

Prints a table (final train loss as the mean of the last 10% of steps, final val loss, both as
differences from float32, the bytes per parameter the state takes, ms/step) and writes
--out (JSON: the table and every curve) and a PNG of the curves beside it. docs/precision.md
holds the figures and what they mean.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax.fileio import atomic_write  # noqa: E402
from mylm_jax.studies.results import figure, markdown_table, save_figure  # noqa: E402

BASE = ROOT / "configs" / "shakespeare_char_cpu.yaml"
VOCAB = 263  # 256 bytes + 7 specials: byte level, no merges (as the base config)
RUNS = {  # name -> overrides {section: {key: value}}
    "float32": {},
    "float32_seed1": {"train": {"seed": 1}, "data": {"seed": 1}},
    "bf16_compute": {"model": {"dtype": "bfloat16"}},
    "bf16_moments": {"optim": {"moment_dtype": "bfloat16"}},
    "bf16_params": {"model": {"param_dtype": "bfloat16"}},
    "bf16_all": {"model": {"dtype": "bfloat16", "param_dtype": "bfloat16"}, "optim": {"moment_dtype": "bfloat16"}},
    "fp8": {"model": {"dtype": "bfloat16", "fp8": True}},
    "float32_b2_999": {"optim": {"beta2": 0.999}},
    "bf16_moments_b2_999": {"optim": {"beta2": 0.999, "moment_dtype": "bfloat16"}},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--only", default="", help="comma-separated run names (default: all of RUNS)")
    p.add_argument("--work", default="runs/compare_precision", help="data and run directories")
    p.add_argument("--out", default="runs/compare_precision/precision.json")
    p.add_argument("--replot", action="store_true", help="no runs: the table and PNG again from --out's JSON")
    return p.parse_args(argv)


def mylm(args: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "mylm_jax.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"compare_precision.py: mylm {' '.join(args[:2])} failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
    return r


def prepare_data(work: Path) -> Path:
    """The embedded corpus as byte-level token shards (prepared once per work directory)."""
    from mylm_jax.data.corpora import corpus_path
    tok, data = work / "tokenizer.json", work / "data"
    if not (data / "train").exists():
        corpus = str(corpus_path())
        work.mkdir(parents=True, exist_ok=True)
        mylm(["tokenizer", "train", corpus, "--vocab-size", str(VOCAB), "--out", str(tok), "--quiet"])
        mylm(["data", "prepare", corpus, "--tokenizer", str(tok), "--out", str(data), "--split", "tail",
              "--val-fraction", "0.1", "--no-eos", "--quiet"])
    return data


def run_config(name: str, data: Path, work: Path, steps: int) -> dict:
    cfg = yaml.safe_load(BASE.read_text())
    cfg["data"]["path"] = str(data)
    cfg["train"].update(steps=steps, eval_every=max(steps // 4, 1), eval_batches=10, eval_at_start=False,
                        out_dir=str(work / name), steps_per_call=10)
    cfg["optim"]["warmup_steps"] = min(cfg["optim"]["warmup_steps"], steps // 10)
    for section, values in RUNS[name].items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def bytes_per_param(cfg: dict) -> int:
    """Parameter + AdamW moments (m and v) storage per parameter."""
    size = {"float32": 4, "bfloat16": 2}
    return size[cfg["model"].get("param_dtype", "float32")] + 2 * size[cfg["optim"].get("moment_dtype", "float32")]


def train(name: str, data: Path, work: Path, steps: int) -> dict:
    cfg = run_config(name, data, work, steps)
    out = Path(cfg["train"]["out_dir"])
    if out.exists():
        import shutil
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out.parent / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    start = time.perf_counter()
    mylm(["pretrain", "--config", str(out.parent / f"{name}.yaml"), "--quiet"])
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    loss = {r["step"]: r["loss"] for r in records if "loss" in r}
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    step_s = [r["step_time_s"] for r in records if "step_time_s" in r and r["step"] > steps // 2]
    tail = max(steps // 10, 1)
    return {"name": name, "overrides": RUNS[name], "wall_s": wall, "bytes_per_param": bytes_per_param(cfg),
            "ms_per_step": 1e3 * statistics.median(step_s) if step_s else None,
            "final_train_loss": float(np.mean([loss[s] for s in sorted(loss)[-tail:]])),
            "final_val_loss": val[max(val)], "loss": loss, "val_loss": val}


def table(runs: list[dict]) -> tuple[list[str], list[list]]:
    ref = {r["name"]: r for r in runs}
    header = ["run", "bytes/param", "train loss", "val loss", "d train", "d val", "ms/step"]
    rows = []
    for r in runs:
        base = ref.get("float32_b2_999" if r["name"].endswith("b2_999") else "float32")
        d = (lambda k: r[k] - base[k]) if base else (lambda k: float("nan"))
        rows.append([r["name"], r["bytes_per_param"], f"{r['final_train_loss']:.4f}", f"{r['final_val_loss']:.4f}",
                     f"{d('final_train_loss'):+.4f}", f"{d('final_val_loss'):+.4f}",
                     f"{r['ms_per_step']:.0f}" if r["ms_per_step"] else "-"])
    return header, rows


def plot(runs: list[dict], path: Path) -> None:
    fig, (ax, dax) = figure(1, 2, figsize=(13, 4.5))
    by_name = {r["name"]: r for r in runs}

    def smooth(loss: dict) -> tuple[np.ndarray, np.ndarray]:
        loss = {int(k): v for k, v in loss.items()}  # JSON keys are strings
        steps = np.array(sorted(loss))
        y = np.array([loss[s] for s in steps])
        w = max(len(y) // 40, 1)
        return steps[w - 1:], np.convolve(y, np.ones(w) / w, mode="valid")

    for r in runs:
        s, y = smooth(r["loss"])
        ax.plot(s, y, label=r["name"], lw=1)
        ref = by_name.get("float32_b2_999" if r["name"].endswith("b2_999") else "float32")
        if ref is not None and r is not ref:
            _, y_ref = smooth(ref["loss"])
            n = min(len(y), len(y_ref))
            dax.plot(s[:n], y[:n] - y_ref[:n], label=r["name"], lw=1)
    ax.set(xlabel="step", ylabel="train loss (moving mean)", title="loss curves", ylim=(None, 3.5))
    dax.axhline(0, color="k", lw=0.5)
    dax.set(xlabel="step", ylabel="loss - float32's", title="difference from float32 (b2_999: its float32)")
    ax.legend(fontsize=7)
    dax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"compare_precision.py: --only: unknown run {unknown[0]!r}; known: {', '.join(RUNS)}")
    out = (ROOT / args.out).resolve()
    if args.replot:
        if not out.is_file():
            raise SystemExit(f"compare_precision.py: --replot: no {out}")
        report = json.loads(out.read_text())
        runs, args.steps = [r for r in report["runs"] if r["name"] in names], report["steps"]
    else:
        work = (ROOT / args.work).resolve()
        data = prepare_data(work)
        runs = []
        for name in names:
            runs.append(train(name, data, work, args.steps))
            print(f"{name}: final train {runs[-1]['final_train_loss']:.4f}, val {runs[-1]['final_val_loss']:.4f} "
                  f"({runs[-1]['wall_s']:.0f} s)", flush=True)
    header, rows = table(runs)
    print(markdown_table(header, rows))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps({"steps": args.steps, "base_config": str(BASE.relative_to(ROOT)),
                                  "table": {"header": header, "rows": rows}, "runs": runs}, indent=1))
    plot(runs, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
