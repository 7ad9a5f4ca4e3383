"""`mylm eval`: a trained run's loss, perplexity and bits per byte on a dataset or on text files.

    mylm eval runs/x --data runs/data/poetry [--split val] [--batches 50] [--step N]
    mylm eval runs/x --text a.txt b.txt [--stride 128] [--step N]

--data scores a prepared dataset's split (default val) through the pretraining loader with
the run's data settings, as the trainer's val_loss / val_bpb (all of it, or --batches
batches of 8 rows). --text scores each file as one document, as `Run.score` does (texts
longer than the context in windows: mylm_jax/train/score.py states the rule), then all files
together (token- and byte-weighted).
"""

from __future__ import annotations

from pathlib import Path

from mylm_jax.cli.common import quiet_libraries
from mylm_jax.config import ConfigError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="loss, perplexity and bits per byte of a run on data or text")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a pretrain or sft run directory")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", metavar="DATASET_DIR", help="a prepared dataset (mylm data prepare --out)")
    what.add_argument("--text", nargs="+", metavar="FILE", help="UTF-8 text files, each scored as one document")
    p.add_argument("--split", default="val", help="the dataset's split (with --data)")
    p.add_argument("--batches", type=int, help="at most this many batches (with --data; default: the whole split)")
    p.add_argument("--stride", type=int, help="window step for texts longer than the context (default: half)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")


def line(name: str, r: dict) -> str:
    bpb = f", bits per byte {r['bits_per_byte']:.4f}" if r.get("bytes") else ""
    return (f"{name}: loss {r['loss']:.4f} nats/token, perplexity {r['perplexity']:.3f}{bpb} "
            f"({r['tokens']:,} tokens" + (f", {r['bytes']:,} bytes)" if r.get("bytes") else ")"))


def run(args) -> None:
    quiet_libraries()
    if args.batches is not None and args.batches < 1:
        raise ConfigError(f"--batches must be positive, got {args.batches}")
    texts = {}
    for name in args.text or ():
        try:
            texts[name] = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--text {name}: cannot read it as UTF-8 text ({e})") from None

    from mylm_jax.train.run_dir import RunDir
    from mylm_jax.train.score import Scorer, evaluate_dataset, summary

    model, cfg, tok = RunDir.open(args.run_dir).load_model(args.step)
    if args.data:
        r = evaluate_dataset(model, cfg, tok, args.data, args.split, args.batches)
        print(line(f"{args.data} ({args.split}, {r['batches']} batches)", r))
        return
    scorer = Scorer(model, cfg, tok, args.stride)
    results = [scorer.score_text(text) for text in texts.values()]
    for name, r in zip(texts, results):
        print(line(name, r))
    if len(results) > 1:
        total = sum(r["loss"] * r["tokens"] for r in results if r["tokens"])
        print(line("all", summary(total, sum(r["tokens"] for r in results), sum(r["bytes"] for r in results))))
