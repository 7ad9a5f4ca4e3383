"""Data pipeline throughput: `data prepare` MB/s and loader tokens/s (goals on the 2-core
development CPU: prepare >= 5 MB/s with every core on a corpus large enough to amortise
the start of the worker processes; >= 1 M tokens/s for packed batches of 8 x 1024).

    python scripts/bench_data.py                        # ../shared/data, table + bench_data.json
    python scripts/bench_data.py --tokenizer runs/tok/tokenizer.json --batches 400
    python scripts/bench_data.py --encoders python      # only the reference encoder

Steps: train a tokenizer on the corpora (unless --tokenizer is given); prepare every
../shared/data corpus, and the Python standard library's own source (~30 MB of real text
on every machine, one .txt of its .py files in sorted order: the large corpus), into
shards with each encoder (python, and hf when `tokenizers` is installed), in one process
and in one per CPU, checking that every run of a corpus wrote the same shards byte for
byte; then time the pretraining loader (packed and windows) and the SFT loader on the
results. The first batches of every loader are untimed (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

CORPORA = {  # name: (inputs under ../shared/data, prepare options)
    "tinyshakespeare": (["tinyshakespeare.txt"], dict(txt_split="blank")),
    "zh_poetry": (["zh_poetry"], dict(template="{title}\n{paragraphs}")),
    "waimai_parquet": (["parquet/waimai_10k.parquet"], {}),
}
LARGE = "python_stdlib"  # the corpus the prepare goal is read on
PREPARE_GOAL_MB_S = 5.0


def write_stdlib_corpus(path: Path) -> Path:
    """The standard library's .py files (not site-packages), sorted, as one text file whose
    files are separated by blank lines (read with txt_split="blank": paragraphs)."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    with path.open("w", encoding="utf-8") as out:
        for file in sorted(root.rglob("*.py")):
            if "site-packages" in file.parts:
                continue
            try:
                out.write(file.read_text(encoding="utf-8") + "\n\n")
            except (UnicodeDecodeError, OSError):  # a few test files are deliberately not UTF-8
                continue
    return path


def same_shards(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.npy"))
    return names == sorted(p.name for p in b.glob("*.npy")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def time_loader(loader, batches: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        next(loader)
    start = time.perf_counter()
    tokens = 0
    for _ in range(batches):
        tokens += next(loader)["inputs"].size
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", help="a saved tokenizer (default: train one, vocab 4096)")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--out", default=str(ROOT / "bench_data.json"))
    parser.add_argument("--encoders", default="python,hf", help="comma-separated; hf is skipped when not installed")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"bench_data: error: {SHARED} not found")

    from mylm_jax.data.hf_encode import hf_available
    from mylm_jax.data.prepare import PrepareSettings, prepare
    from mylm_jax.data.pretrain import LoaderConfig, pretrain_loader
    from mylm_jax.data.readers import TextSelector, read_documents
    from mylm_jax.data.sft import SFTExamples, sft_loader
    from mylm_jax.tokenizer import Tokenizer, train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    if args.tokenizer:
        tok_path = args.tokenizer
    else:
        texts = [d.text for d in read_documents([str(SHARED / "tinyshakespeare.txt")], txt_split="blank")]
        texts += [d.text for d in read_documents([str(SHARED / "zh_poetry" / "poet.tang.0.json")],
                                                 TextSelector(template="{title}\n{paragraphs}"))]
        tok_path = str(work / "tokenizer.json")
        train_tokenizer(texts, vocab_size=4096, progress=False).save(tok_path)
    tokenizer = Tokenizer.load(tok_path)
    cpus = os.cpu_count() or 1
    results = {"cpus": cpus, "tokenizer_vocab": tokenizer.vocab_size, "prepare": {}, "loader": {}}

    encoders = [e for e in args.encoders.split(",") if e != "hf" or hf_available()]
    corpora = {name: ([str(SHARED / i) for i in inputs], options) for name, (inputs, options) in CORPORA.items()}
    corpora[LARGE] = ([str(write_stdlib_corpus(work / "python_stdlib.txt"))], dict(txt_split="blank"))
    runs = [(encoder, workers) for encoder in encoders for workers in (1, cpus)]
    header = [f"{e} {w} proc{'s' if w > 1 else ''}" for e, w in runs]
    print(f"{'prepare (MB/s)':<18} {'MB':>6} {'tokens':>11} " + " ".join(f"{h:>14}" for h in header) + "  shards")
    for name, (inputs, options) in corpora.items():
        row, dirs = {}, []
        for encoder, workers in runs:
            out_dir = work / f"{name}_{encoder}_{workers}"
            settings = PrepareSettings(inputs=tuple(inputs), out_dir=str(out_dir), tokenizer=tok_path,
                                       workers=workers, encoder=encoder, **options)
            start = time.perf_counter()
            meta = prepare(settings, progress=False)
            row[f"{encoder}_{workers}"] = meta["text_bytes"] / 1e6 / (time.perf_counter() - start)
            dirs.append(out_dir)
        identical = all(same_shards(dirs[0], d) for d in dirs[1:])
        tokens = sum(s["num_tokens"] for s in meta["splits"].values())
        results["prepare"][name] = {"text_MB": meta["text_bytes"] / 1e6, "tokens": tokens,
                                    "MB_per_s": row, "identical_shards": identical}
        print(f"{name:<18} {meta['text_bytes'] / 1e6:>6.2f} {tokens:>11,} "
              + " ".join(f"{row[f'{e}_{w}']:>14.2f}" for e, w in runs) + f"  {'identical' if identical else 'DIFFER'}")
    best = max(results["prepare"][LARGE]["MB_per_s"][f"{e}_{cpus}"] for e in encoders)
    results["prepare_goal_met"] = best >= PREPARE_GOAL_MB_S
    print(f"goal: prepare >= {PREPARE_GOAL_MB_S:g} MB/s with {cpus} processes on {LARGE}: {best:.2f} MB/s, "
          f"{'met' if results['prepare_goal_met'] else 'NOT met'}")

    data_dir = str(work / f"zh_poetry_{encoders[0]}_{cpus}")
    print(f"\n{'loader (8 x 1024)':<34} {'tokens/s':>12}")
    cases = {
        "packed": LoaderConfig(1024, 8, "packed"),
        "packed, bos + aligned": LoaderConfig(1024, 8, "packed", bos_id=tokenizer.bos_id, align_to_documents=True),
        "windows": LoaderConfig(1024, 8, "windows"),
        f"packed, {cpus} prefetch workers": LoaderConfig(1024, 8, "packed", workers=cpus),
    }
    for label, cfg in cases.items():
        rate = time_loader(pretrain_loader(data_dir, "train", cfg), args.batches)
        results["loader"][label] = rate
        print(f"{label:<34} {rate:>12,.0f}")
    examples = SFTExamples.load([str(SHARED / "sft" / "alpaca_zh_demo.json")], tokenizer, 1024)
    rate = time_loader(sft_loader(examples, LoaderConfig(1024, 8, seed=0)), args.batches)
    results["loader"]["sft packed"] = rate
    print(f"{'sft packed':<34} {rate:>12,.0f}")
    goal = results["loader"]["packed"] >= 1e6
    print(f"\ngoal: packed 8 x 1024 >= 1,000,000 tokens/s: {'met' if goal else 'NOT met'}")
    results["goal_met"] = goal
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
