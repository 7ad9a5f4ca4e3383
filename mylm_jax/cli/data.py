"""`mylm data prepare | inspect`.

    mylm data prepare ../shared/data/zh_poetry --template "{title}\\n{paragraphs}" \\
        --tokenizer runs/tok/tokenizer.json --out runs/data/poetry
    mylm data inspect runs/data/poetry
"""

from __future__ import annotations

import argparse
import sys

from mylm_jax.data.clean import DEFAULT_SPEC
from mylm_jax.data.prepare import PrepareSettings, prepare
from mylm_jax.data.shards import TokenShards, dataset_tokenizer, read_metadata

INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="prepare token shards from raw text, inspect them")
    sub = data.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("prepare", help="read, clean and tokenize inputs into token shards",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", help="files, directories, globs or http(s) URLs (URL#sha256=HEX)")
    p.add_argument("--tokenizer", required=True, help="a saved tokenizer (mylm tokenizer train --out)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--field", default="text", help="the text field of JSON / JSONL / Parquet records")
    p.add_argument("--template", help='join fields instead, e.g. "{title}\\n{paragraphs}"')
    p.add_argument("--txt-split", default="file", help="file | line | blank | any separator string")
    p.add_argument("--clean", default=DEFAULT_SPEC, help="cleaning steps (see mylm_jax/data/clean.py)")
    p.add_argument("--split", choices=["document", "tail"], default="document")
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--no-eos", dest="eos", action="store_false", help="do not end documents with EOS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-tokens", type=int, default=50_000_000)
    p.add_argument("--workers", type=int, default=0, help="tokenizer processes (0: one per CPU)")
    p.add_argument("--on-error", choices=["skip", "fail"], default="skip")
    p.add_argument("--cache-dir", help="where URLs are downloaded")
    i = sub.add_parser("inspect", help="print a prepared dataset's metadata and a sample")
    i.add_argument("data_dir")


def _unescape(s: str | None) -> str | None:
    return s.replace("\\n", "\n").replace("\\t", "\t") if s is not None else None


def format_report(meta: dict) -> str:
    r, c = meta["reader"], meta["cleaning"]
    skipped = f"skipped {r['skipped']:,}" + (f" {r['by_reason']}" if r["skipped"] else "")
    lines = [f"records read {r['records']:,}: documents {r['documents']:,}, {skipped}"]
    lines += [f"  skipped: {loc}" for loc in r["first"]]
    lines.append(f"cleaning ({c['spec']}): in {c['documents_in']:,}, kept {c['kept']:,}, dropped {c['dropped']}")
    for name, s in meta["splits"].items():
        lines.append(f"{name:<5} {s['num_documents']:>9,} documents {s['num_tokens']:>12,} tokens "
                     f"in {len(s['shards'])} shard(s)")
    if meta["split"]["mode"] == "tail":
        lines.append(f"val = the last {meta['split']['val_fraction']:g} of the train stream (tail split)")
    tokens = sum(s["num_tokens"] for s in meta["splits"].values())
    mb = meta["text_bytes"] / 1e6
    lines.append(f"{mb:.2f} MB of text -> {tokens:,} tokens ({meta['text_bytes'] / max(tokens, 1):.2f} bytes/token, "
                 f"{meta['dtype']}) in {meta['seconds']:.1f} s ({mb / max(meta['seconds'], 1e-9):.2f} MB/s)")
    return "\n".join(lines)


def run(args) -> None:
    if args.data_command == "prepare":
        settings = PrepareSettings(
            inputs=tuple(args.inputs), out_dir=args.out, tokenizer=args.tokenizer, field=args.field,
            template=_unescape(args.template), txt_split=_unescape(args.txt_split), clean=args.clean,
            seed=args.seed, split=args.split, val_fraction=args.val_fraction, eos=args.eos,
            shard_tokens=args.shard_tokens, workers=args.workers, on_error=args.on_error,
            cache_dir=args.cache_dir)
        try:
            meta = prepare(settings)
        except KeyboardInterrupt:  # prepare() has stopped its workers and removed its files
            print(f"mylm: interrupted; no dataset written to {args.out} (partial files removed)", file=sys.stderr)
            raise SystemExit(INTERRUPTED) from None
        if meta.get("up_to_date"):
            print(f"{args.out}: up to date (same settings and inputs); nothing to do")
        print(format_report(meta))
        copy = meta["tokenizer"]["file"]
        print(f"wrote {args.out}/metadata.json (the dataset carries its tokenizer: {args.out}/{copy})")
        return
    meta = read_metadata(args.data_dir)
    print(format_report(meta))
    tokenizer, path, note = dataset_tokenizer(args.data_dir, meta)
    print(f"tokenizer {path} (fingerprint {meta['tokenizer']['fingerprint'][:16]}...)")
    shards = TokenShards.open(args.data_dir, "train")
    if tokenizer is None:
        print(f"note: {note}; no sample")
    elif shards.num_documents:
        text = tokenizer.decode(shards.document(0)[:64].tolist())
        print(f"first train document, 64 tokens: {text!r}")

