"""Data pipeline throughput: `data prepare` MB/s and loader tokens/s (goal: >= 1 M tokens/s
for packed batches of 8 x 1024 on the 2-core development CPU).

    python scripts/bench_data.py                        # ../shared/data, table + bench_data.json
    python scripts/bench_data.py --tokenizer runs/tok/tokenizer.json --batches 400

Steps: train a tokenizer on the corpora (unless --tokenizer is given), prepare every
../shared/data corpus into shards with one and with all CPU processes, then time the
pretraining loader (packed and windows) and the SFT loader on the results. The first
batches of every loader are untimed (warm-up).
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

CORPORA = {  # name: (inputs, prepare options)
    "tinyshakespeare": (["tinyshakespeare.txt"], dict(txt_split="blank")),
    "zh_poetry": (["zh_poetry"], dict(template="{title}\n{paragraphs}")),
    "waimai_parquet": (["parquet/waimai_10k.parquet"], {}),
}


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
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"bench_data: error: {SHARED} not found")

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

    print(f"{'prepare':<18} {'MB':>6} {'tokens':>10} {'1 proc MB/s':>12} {f'{cpus} procs MB/s':>13}")
    for name, (inputs, options) in CORPORA.items():
        row = {}
        for workers in (1, cpus):
            settings = PrepareSettings(inputs=tuple(str(SHARED / i) for i in inputs),
                                       out_dir=str(work / f"{name}_{workers}"), tokenizer=tok_path,
                                       workers=workers, **options)
            start = time.perf_counter()
            meta = prepare(settings, progress=False)
            seconds = time.perf_counter() - start
            row[workers] = meta["text_bytes"] / 1e6 / seconds
        tokens = sum(s["num_tokens"] for s in meta["splits"].values())
        results["prepare"][name] = {"text_MB": meta["text_bytes"] / 1e6, "tokens": tokens,
                                    "MB_per_s_1_process": row[1], f"MB_per_s_{cpus}_processes": row[cpus]}
        print(f"{name:<18} {meta['text_bytes'] / 1e6:>6.2f} {tokens:>10,} {row[1]:>12.2f} {row[cpus]:>13.2f}")

    data_dir = str(work / f"zh_poetry_{cpus}")
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
