"""`mylm data prepare | clean | inspect`.

    mylm data prepare ../shared/data/zh_poetry --template "{title}\\n{paragraphs}" \\
        --tokenizer runs/tok/tokenizer.json --out runs/data/poetry [--quiet]
    mylm data clean ../shared/data/zh_poetry --template "{title}\\n{paragraphs}" \\
        --clean "nfc,strip,dedup" [--sample 0.1 --seed 0] [--postfix "\\n"] --out runs/poetry.jsonl
    mylm data inspect runs/data/poetry

`clean` runs the same readers and Cleaner as `prepare` and writes the kept texts as JSONL
records {"text": ...} (atomically: the file appears whole or not at all), with the same
report of records read, skipped and dropped.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mylm_jax.cli.common import HelpFormatter, add_quiet
from mylm_jax.data.clean import DEFAULT_SPEC, Cleaner
from mylm_jax.data.errors import DataError, SkipLog
from mylm_jax.data.prepare import PrepareSettings, check_out_dir, kept_note, prepare
from mylm_jax.data.readers import TextSelector, expand_inputs, read_documents
from mylm_jax.data.shards import TokenShards, dataset_tokenizer, read_metadata
from mylm_jax.ownership import listing

INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)


def add_reading_args(p) -> None:
    """The inputs and how records become texts: the same for prepare and clean."""
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files, directories, globs or http(s) URLs (URL#sha256=HEX)")
    p.add_argument("--field", default="text", help="the text field of JSON / JSONL / Parquet records")
    p.add_argument("--template", help='join fields instead, e.g. "{title}\\n{paragraphs}" (default: --field)')
    p.add_argument("--txt-split", default="file", help="file | line | blank | any separator string")
    p.add_argument("--clean", default=DEFAULT_SPEC, help="cleaning steps (see mylm_jax/data/clean.py)")
    p.add_argument("--on-error", choices=["skip", "fail"], default="skip", help="bad records: count or stop")
    p.add_argument("--cache-dir", help="where URLs are downloaded (default: ~/.cache/mylm/downloads)")


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="prepare token shards from raw text, clean it, inspect them",
                                 formatter_class=HelpFormatter)
    sub = data.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("prepare", help="read, clean and tokenize inputs into token shards",
                       formatter_class=HelpFormatter)
    add_reading_args(p)
    p.add_argument("--tokenizer", required=True, help="a saved tokenizer (mylm tokenizer train --out)")
    p.add_argument("--out", required=True, help="output directory: new, empty, or a dataset made here before")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset made from other inputs or settings (kept whole until the new one is done)")
    p.add_argument("--split", choices=["document", "tail"], default="document",
                   help="val: whole documents, or the tail of the token stream")
    p.add_argument("--val-fraction", type=float, default=0.01, help="the share of the data held out for val")
    p.add_argument("--no-eos", dest="eos", action="store_false",
                   help="do not end documents with the EOS token (EOS is appended unless given)")
    p.add_argument("--seed", type=int, default=0, help="the val split's and downsample's seed")
    p.add_argument("--shard-tokens", type=int, default=50_000_000, help="tokens per shard file")
    p.add_argument("--workers", type=int, default=0, help="encoding processes (0: one per CPU, one for an input under 4 MB)")
    p.add_argument("--encoder", choices=["auto", "hf", "python"], default="auto",
                   help="who applies the merges: python (the reference), hf (HF tokenizers); the same ids; "
                        "auto: python, the faster in one process (docs/data.md)")
    add_quiet(p)
    c = sub.add_parser("clean", help="read and clean inputs into one JSONL file of {\"text\": ...} records",
                       formatter_class=HelpFormatter)
    add_reading_args(c)
    c.add_argument("--out", required=True, help="the JSONL file to write")
    c.add_argument("--sample", type=float, metavar="FRACTION",
                   help="keep this fraction of the documents, chosen by a seeded hash (the downsample step; "
                        "default: all)")
    c.add_argument("--seed", type=int, default=0, help="the sample's seed")
    c.add_argument("--postfix", metavar="TEXT", help="append TEXT to every kept text (escapes \\n, \\t; "
                   "default: nothing)")
    i = sub.add_parser("inspect", help="print a prepared dataset's metadata and a sample",
                       formatter_class=HelpFormatter)
    i.add_argument("data_dir", help="a directory written by `mylm data prepare`")


def _unescape(s: str | None) -> str | None:
    return s.replace("\\n", "\n").replace("\\t", "\t") if s is not None else None


def reading_report(r: dict, c: dict) -> list[str]:
    """The lines on records read, skipped and cleaned: `prepare` and `clean` print the same."""
    skipped = f"skipped {r['skipped']:,}" + (f" {r['by_reason']}" if r["skipped"] else "")
    lines = [f"records read {r['records']:,}: documents {r['documents']:,}, {skipped}"]
    lines += [f"  skipped: {loc}" for loc in r["first"]]
    lines.append(f"cleaning ({c['spec']}): in {c['documents_in']:,}, kept {c['kept']:,}, dropped {c['dropped']}")
    return lines


def format_report(meta: dict) -> str:
    lines = reading_report(meta["reader"], meta["cleaning"])
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


def cmd_clean(args) -> None:
    """Read -> clean (+ sample, + postfix) -> JSONL, written to a temporary file renamed at the end."""
    out = Path(args.out)
    if out.is_dir():
        raise DataError(f"--out {out}: is a directory; expected a file name such as {out / 'clean.jsonl'}")
    spec = args.clean
    if args.sample is not None:
        if not 0 < args.sample <= 1:
            raise DataError(f"--sample must be a fraction in (0, 1], got {args.sample}")
        spec = f"{spec},downsample={args.sample}" if spec else f"downsample={args.sample}"
    postfix = _unescape(args.postfix) or ""
    log = SkipLog(args.on_error)
    cleaner = Cleaner(spec, args.seed)
    files = expand_inputs(list(args.inputs), args.cache_dir)
    selector = TextSelector(args.field, _unescape(args.template))
    texts = cleaner(d.text for d in read_documents(files, selector, log, _unescape(args.txt_split)))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for text in texts:
                f.write(json.dumps({"text": text + postfix}, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except OSError as e:
        raise DataError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)
    reader = {"records": cleaner.documents_in + log.total, "documents": cleaner.documents_in, **log.report()}
    print("\n".join(reading_report(reader, cleaner.report())))
    print(f"wrote {out}: {cleaner.kept:,} records {{\"text\": ...}}")


def run(args) -> None:
    if args.data_command == "clean":
        cmd_clean(args)
        return
    if args.data_command == "prepare":
        settings = PrepareSettings(
            inputs=tuple(args.inputs), out_dir=args.out, tokenizer=args.tokenizer, field=args.field,
            template=_unescape(args.template), txt_split=_unescape(args.txt_split), clean=args.clean,
            seed=args.seed, split=args.split, val_fraction=args.val_fraction, eos=args.eos,
            shard_tokens=args.shard_tokens, workers=args.workers, on_error=args.on_error,
            cache_dir=args.cache_dir, encoder=args.encoder, overwrite=args.overwrite)
        earlier = check_out_dir(Path(args.out))
        try:
            meta = prepare(settings, progress=not args.quiet)
        except KeyboardInterrupt:  # prepare() has stopped its workers and removed its files
            print(f"mylm: interrupted; {kept_note(Path(args.out), earlier)} (partial files removed)", file=sys.stderr)
            raise SystemExit(INTERRUPTED) from None
        if meta.get("up_to_date"):
            print(f"{args.out}: up to date (same settings and inputs); nothing to do")
        if meta.get("replaced"):
            print(f"replaced the earlier dataset in {args.out} (removed {len(meta['replaced'])} files: "
                  f"{listing(meta['replaced'])})")
        if meta.get("kept"):
            print(f"kept {listing(meta['kept'])} in {args.out} (not made by MyLM)")
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

