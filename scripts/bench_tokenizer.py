"""Benchmark: our pure-Python BPE vs Hugging Face `tokenizers` (Rust), trained with the same
settings on the same text, side by side in one run.

    pip install -e ".[bench]" && python scripts/bench_tokenizer.py [--vocab-size 8192] [--pattern gpt4]

Corpus: ../shared/data tinyshakespeare (one text per line) + the zh_poetry poems' titles and
verse lines (one text each), about 4.4 MB of UTF-8. Measures
- training time to `--vocab-size` (both without progress bars),
- encode throughput in MB/s of UTF-8: `encode_batch` over all texts on a freshly loaded
  tokenizer (a cold cache for us; the default worker count, one per CPU, for both),
- bytes per token over the corpus, and whether the two merge lists are identical.
Prints a table and writes bench_tokenizer.json in the repo root. Goals (issue): training
<= 5x HF's time, encoding >= 0.5x HF's throughput, bytes/token within 1% of HF's.
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

from mylm_jax.tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer, train_tokenizer  # noqa: E402
from mylm_jax.tokenizer.hf_export import hf_merge_list, to_hf_json, train_hf_reference  # noqa: E402
from mylm_jax.tokenizer.patterns import resolve_pattern  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def load_corpus(data_dir: Path) -> list[str]:
    texts = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    for path in sorted((data_dir / "zh_poetry").glob("*.json")):
        for poem in json.loads(path.read_text(encoding="utf-8")):
            texts.append(poem["title"])
            texts.extend(poem["paragraphs"])
    return texts


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--pattern", default="gpt4")
    parser.add_argument("--out", default=str(ROOT / "bench_tokenizer.json"))
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"bench_tokenizer: data not found: {DATA}")
    texts = load_corpus(DATA)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    print(f"corpus: {len(texts):,} texts, {n_bytes / 1e6:.2f} MB UTF-8; vocab {args.vocab_size}, "
          f"pattern {args.pattern}, {os.cpu_count()} CPUs")

    ours, ours_train = timed(lambda: train_tokenizer(texts, args.vocab_size, args.pattern, progress=False))
    with tempfile.TemporaryDirectory() as tmp:  # a fresh tokenizer: nothing cached from training
        ours.save(Path(tmp) / "tok.json")
        fresh = Tokenizer.load(Path(tmp) / "tok.json")
    ours_ids, ours_encode = timed(lambda: fresh.encode_batch(texts))

    hf, hf_train = timed(lambda: train_hf_reference(texts, args.vocab_size, resolve_pattern(args.pattern),
                                                    DEFAULT_SPECIAL_TOKENS))
    hf_encodings, hf_encode = timed(lambda: hf.encode_batch(texts))

    ours_tokens = sum(map(len, ours_ids))
    hf_tokens = sum(len(e.ids) for e in hf_encodings)
    same_merges = to_hf_json(ours)["model"]["merges"] == hf_merge_list(hf)
    rows = {
        "train_s": (ours_train, hf_train),
        "encode_MB_per_s": (n_bytes / 1e6 / ours_encode, n_bytes / 1e6 / hf_encode),
        "bytes_per_token": (n_bytes / ours_tokens, n_bytes / hf_tokens),
    }
    goals = {"train_s": ("<= 5x", lambda r: r <= 5), "encode_MB_per_s": (">= 0.5x", lambda r: r >= 0.5),
             "bytes_per_token": ("within 1%", lambda r: abs(r - 1) <= 0.01)}
    print("\n| metric | MyLM (Python) | HF tokenizers (Rust) | MyLM / HF | goal | met |")
    print("|---|---:|---:|---:|---|---|")
    report = {"corpus_texts": len(texts), "corpus_bytes": n_bytes, "vocab_size": args.vocab_size,
              "pattern": args.pattern, "cpus": os.cpu_count(), "same_merges_as_hf": same_merges}
    for name, (mine, theirs) in rows.items():
        ratio = mine / theirs
        goal, met = goals[name]
        print(f"| {name} | {mine:.4g} | {theirs:.4g} | {ratio:.3f} | {goal} | {'yes' if met(ratio) else 'NO'} |")
        report[name] = {"mylm": mine, "hf": theirs, "ratio": ratio, "goal": goal, "met": met(ratio)}
    print(f"\nmerge lists identical to HF's: {same_merges}; vocab size {ours.vocab_size} (HF {hf.get_vocab_size()})")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
