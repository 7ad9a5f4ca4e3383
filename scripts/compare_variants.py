"""Model variants x optimizers at a matched token budget: which design learns fastest here?

    python scripts/compare_variants.py [--variants gpt2 modern gated_headwise gated_elementwise moe]
        [--optimizers adamw muon] [--steps 150] [--repeat modern/adamw] [--out runs/studies/compare_variants]

Every run sees the same number of tokens (steps x batch x seq_len) of the same data in
the same order, trained by `mylm_jax.train.loop.pretrain`; only the model section (see
mylm_jax/variants.py variant_model) and the optimizer change. Reported per run:
total parameters and the matmul weights a token passes through (for MoE, the active
parameters: 2 of 4 half-width experts ~ one dense MLP), final val loss, median tokens/s
and wall time (compilation included). One configuration (--repeat) is trained again
with another seed (init and data order): the gap between the two is the noise floor,
so differences between variants smaller than it say nothing.

Writes results.json, report.md and variants_val_loss.png (val loss vs tokens, one
colour per variant, solid AdamW / dashed Muon, dotted the seed repeat).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mylm_jax.config import ConfigError  # noqa: E402
from mylm_jax.studies.datasets import prepare_dataset, study_config  # noqa: E402
from mylm_jax.studies.results import (  # noqa: E402
    figure, markdown_table, read_metrics, save_figure, series, write_results)
from mylm_jax.studies.script import StudyError, add_study_args, fail, with_overrides  # noqa: E402
from mylm_jax.variants import STUDY_VARIANTS, variant_model  # noqa: E402

PROG = "compare_variants.py"
OPTIM = {"adamw": {"name": "adamw"}, "muon": {"name": "muon", "muon_lr": 0.02}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(STUDY_VARIANTS))
    p.add_argument("--optimizers", nargs="+", default=["adamw", "muon"])
    p.add_argument("--repeat", default="modern/adamw", help="VARIANT/OPTIMIZER trained again with seed 1 ('' none)")
    p.add_argument("--steps", type=int, default=150)
    add_study_args(p, "compare_variants")
    p.add_argument("--eval-every", type=int, default=25)
    return p.parse_args(argv)


def plan(args) -> list[tuple[str, str, int]]:
    for v in args.variants:
        variant_model(v)  # raises for an unknown name
    for o in args.optimizers:
        if o not in OPTIM:
            raise StudyError(f"unknown optimizer {o!r} (expected adamw or muon)")
    runs = [(v, o, 0) for v in args.variants for o in args.optimizers]
    if args.repeat:
        v, _, o = args.repeat.partition("/")
        if (v, o, 0) not in runs:
            raise StudyError(f"--repeat {args.repeat!r} is not one of the runs (VARIANT/OPTIMIZER)")
        runs.append((v, o, 1))
    return runs


def run_config(args, data_path: str, variant: str, optimizer: str, seed: int):
    """One run's config (the study's overrides applied), and where it goes."""
    out = Path(args.out) / "runs" / f"{variant}-{optimizer}-seed{seed}"
    cfg = study_config(data_path, out, variant_model(variant, args.d_model, args.layers, args.heads),
                       {**OPTIM[optimizer], "lr": args.lr, "warmup_steps": max(1, args.steps // 15)},
                       {"steps": args.steps, "batch_size": args.batch, "seed": seed, "log_every": 5,
                        "eval_every": args.eval_every},
                       seq_len=args.seq_len, data={"seed": seed})
    return with_overrides(cfg, args.overrides), out


def train_one(args, data_path: str, variant: str, optimizer: str, seed: int) -> dict:
    from mylm_jax.model.accounting import active_matmul_params, param_count
    from mylm_jax.train.loop import pretrain

    name = f"{variant}-{optimizer}-seed{seed}"
    cfg, out = run_config(args, data_path, variant, optimizer, seed)
    start = time.perf_counter()
    pretrain(cfg, overwrite=True)  # a rerun of the study replaces its earlier run
    wall = time.perf_counter() - start
    records = read_metrics(out)
    val_steps, val = series(records, "val_loss")
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    speeds = speeds[1:] or speeds  # the first logged step includes compilation
    return {"name": name, "variant": variant, "optimizer": optimizer, "seed": seed,
            "params": param_count(cfg.model), "active_matmul_params": active_matmul_params(cfg.model),
            "val_steps": val_steps, "val_tokens": val_steps * args.batch * args.seq_len, "val_loss": val,
            "final_val_loss": float(val[-1]), "tokens_per_s": statistics.median(speeds) if speeds else None,
            "wall_s": wall, "run_dir": str(out)}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        runs = plan(args)
        data_path = prepare_dataset(args.data, args.vocab, args.cache, args.max_chars)
        for run in runs:  # every run's config is checked (overrides included) before any trains
            run_config(args, data_path, *run)
    except ConfigError as e:
        fail(PROG, str(e))
    results = []
    for variant, optimizer, seed in runs:
        print(f"== {variant} / {optimizer} / seed {seed}", flush=True)
        results.append(train_one(args, data_path, variant, optimizer, seed))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = figure(figsize=(8, 5))
    colours = {v: f"C{i}" for i, v in enumerate(args.variants)}
    for r in results:
        style = ":" if r["seed"] else ("-" if r["optimizer"] == "adamw" else "--")
        ax.plot(r["val_tokens"], r["val_loss"], ls=style, color=colours[r["variant"]], marker="o", ms=3,
                label=f"{r['variant']} {r['optimizer']}" + (f" seed {r['seed']}" if r["seed"] else ""))
    ax.set(xlabel="tokens", ylabel="validation loss", title="variants x optimizers at a matched token budget")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, out / "variants_val_loss.png")

    noise = None
    if args.repeat:
        pair = [r["final_val_loss"] for r in results if f"{r['variant']}/{r['optimizer']}" == args.repeat]
        noise = abs(pair[0] - pair[1])
    rows = [[r["variant"], r["optimizer"], r["seed"], r["params"], r["active_matmul_params"], r["final_val_loss"],
             f"{r['tokens_per_s']:,.0f}", f"{r['wall_s']:.1f}"] for r in results]
    best = min(results, key=lambda r: r["final_val_loss"])
    summary = {"runs": results, "best": best["name"], "seed_noise": noise,
               "tokens_per_run": args.steps * args.batch * args.seq_len}
    report = (f"# Variants x optimizers, {summary['tokens_per_run']:,} tokens each\n\n"
              f"`python scripts/compare_variants.py {' '.join(sys.argv[1:])}`\n\n"
              f"d_model={args.d_model}, {args.layers} layers, batch {args.batch} x {args.seq_len}, "
              f"{args.steps} steps, lr {args.lr} (Muon: 0.02 on hidden matrices).\n\n"
              + markdown_table(["variant", "optimizer", "seed", "params", "active matmul params", "final val loss",
                                "tokens/s", "wall s"], rows)
              + f"\nBest: **{best['name']}** ({best['final_val_loss']:.4f}). "
              + (f"Seed noise ({args.repeat}, seeds 0 and 1): **{noise:.4f}**.\n" if noise is not None else "\n")
              + "\n![val loss](variants_val_loss.png)\n")
    write_results(out, summary, report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
