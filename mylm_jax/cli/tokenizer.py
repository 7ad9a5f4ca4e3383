"""`mylm tokenizer train | encode | decode | export-hf | inspect`.

    mylm tokenizer train a.txt data/ b.parquet --field text --vocab-size 8192 --out tok.json [--quiet]
    mylm tokenizer encode --tokenizer tok.json [--text "..." | --input f.txt] [--allow-special]
    mylm tokenizer decode --tokenizer tok.json 15496 11 995
    mylm tokenizer export-hf --tokenizer tok.json --out tokenizer.json
    mylm tokenizer inspect --tokenizer tok.json

User mistakes raise TokenizerError; `mylm` prints it as one line and exits with 2. The
training texts come through the data pipeline's readers, so any input `mylm data
prepare` reads (Parquet, directories, globs, URLs, templates) trains a tokenizer too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from mylm_jax.cli.common import HelpFormatter, add_quiet
from mylm_jax.data.errors import SkipLog
from mylm_jax.data.readers import TextSelector, read_documents
from mylm_jax.tokenizer import PRESET_PATTERNS, Tokenizer, TokenizerError, train_tokenizer
from mylm_jax.tokenizer.train import shortfall_note


def read_training_texts(args, log) -> Iterator[str]:
    """Texts from any input the data pipeline reads (mylm_jax/data/readers.py): files,
    directories, globs, URLs; .txt / .json / .jsonl / .parquet; a field or a template.
    Bad records are skipped and counted in `log` (or stop the run with --on-error fail)."""
    selector = TextSelector(args.field, args.template.replace("\\n", "\n") if args.template else None)
    for doc in read_documents(args.inputs, selector, log, txt_split=args.txt_split):
        yield doc.text


def check_out(path: str) -> None:
    """Fail now, not after a long training run, if `path` cannot be written: create its
    directory and write (and remove) a probe file there. The file itself is written
    atomically at the end (Tokenizer.save), so a good earlier one is never truncated."""
    out = Path(path)
    if out.is_dir():
        raise TokenizerError(f"--out {out}: is a directory; expected a file name such as {out / 'tokenizer.json'}")
    probe = out.with_name(f".{out.name}.probe-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TokenizerError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def cmd_train(args) -> None:
    if args.input:  # the old grammar, still read: `--input A B` is the same as `A B`
        print("note: --input is deprecated; give the inputs as positional arguments "
              "(mylm tokenizer train A B ... --out F)", file=sys.stderr)
    args.inputs = [*(args.inputs or []), *(args.input or [])]
    if not args.inputs:
        raise TokenizerError("no inputs: name the files, directories, globs or URLs to train on")
    check_out(args.out)
    log = SkipLog(args.on_error)
    texts = read_training_texts(args, log)
    tokenizer = train_tokenizer(texts, args.vocab_size, args.pattern, min_frequency=args.min_frequency,
                                progress=not args.quiet)
    tokenizer.save(args.out)
    print(f"wrote {args.out}: vocab_size {tokenizer.vocab_size}, fingerprint {tokenizer.fingerprint()[:16]}")
    note = shortfall_note(tokenizer, args.vocab_size, args.min_frequency)
    if note:
        print(note)
    if log.total:
        print(f"inputs: {log.summary()}")


def _load(args) -> Tokenizer:
    return Tokenizer.load(args.tokenizer)


def cmd_encode(args) -> None:
    tokenizer = _load(args)
    if args.input or args.text is None:
        if args.input:
            path = Path(args.input)
            if not path.is_file():
                raise TokenizerError(f"input file not found: {path}")
            name, raw = str(path), path.read_bytes()
        else:  # bytes, not sys.stdin's text layer, so bad input is reported like a file's
            stdin = sys.stdin
            name, raw = "<stdin>", (stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode())
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TokenizerError(f"{name}: not valid UTF-8 at byte {e.start} "
                                 f"(bytes {raw[e.start:e.end].hex(' ')}); expected UTF-8 text") from None
    else:
        text = args.text
    ids = tokenizer.encode(text, allowed_special="all" if args.allow_special else ())
    print(" ".join(map(str, ids)))


def cmd_decode(args) -> None:
    tokenizer = _load(args)
    raw = args.ids or sys.stdin.read().split()
    try:
        ids = [int(x) for x in raw]
    except ValueError as e:
        raise TokenizerError(f"token ids must be integers ({e})") from None
    print(tokenizer.decode(ids))


def cmd_export_hf(args) -> None:
    tokenizer = _load(args)
    tokenizer.export_hf(args.out)
    print(f"wrote {args.out} (Hugging Face tokenizer.json)")


def cmd_inspect(args) -> None:
    if args.sample < 0:
        raise TokenizerError(f"--sample must be 0 or more (how many tokens to show), got {args.sample}")
    tokenizer = _load(args)
    n_merged = len(tokenizer.token_bytes) - 256
    print(f"vocab size      {tokenizer.vocab_size} (256 bytes + {n_merged} merged + "
          f"{len(tokenizer.special_tokens)} special)")
    print(f"pattern         {tokenizer.pattern_name or 'custom'}: {tokenizer.pattern}")
    print(f"fingerprint     {tokenizer.fingerprint()}")
    print("special tokens  " + ", ".join(f"{t}={i}" for t, i in tokenizer.special_tokens.items()))
    show = lambda i: repr(tokenizer.id_to_bytes(i).decode("utf-8", errors="replace"))  # noqa: E731
    if args.sample == 0:  # asked for no tokens
        return
    longest = sorted(range(256, len(tokenizer.token_bytes)), key=lambda i: -len(tokenizer.token_bytes[i]))
    print("longest tokens  " + "  ".join(f"{i}:{show(i)}" for i in longest[:args.sample]))
    step = max(1, n_merged // args.sample)
    sample = range(256, len(tokenizer.token_bytes), step)[:args.sample]
    print("sample tokens   " + "  ".join(f"{i}:{show(i)}" for i in sample))


SUBCOMMANDS = {
    "train": (cmd_train, "train a BPE tokenizer on text files"),
    "encode": (cmd_encode, "print the token ids of a text"),
    "decode": (cmd_decode, "print the text of token ids"),
    "export-hf": (cmd_export_hf, "write a Hugging Face tokenizer.json"),
    "inspect": (cmd_inspect, "print vocab size, specials, pattern, fingerprint and sample tokens"),
}


def add_parser(subparsers) -> None:
    """Add `tokenizer` and its sub-subcommands to the `mylm` parser's subparsers."""
    parser = subparsers.add_parser("tokenizer", help="train / use / export the BPE tokenizer",
                                   description="Byte-level BPE tokenizer.", formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="tokenizer_command", required=True)
    parsers = {name: sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
               for name, (_, text) in SUBCOMMANDS.items()}
    train = parsers["train"]
    train.add_argument("inputs", nargs="*", metavar="INPUT",
                       help="files (.txt .json .jsonl .parquet), directories, globs or URLs")
    train.add_argument("--input", nargs="+", metavar="PATH",
                       help="deprecated: the same as giving the inputs positionally")
    train.add_argument("--field", default="text", help="the text field of JSON / JSONL / Parquet records")
    train.add_argument("--template", help='join fields instead, e.g. "{title}\\n{paragraphs}" (default: --field)')
    train.add_argument("--txt-split", default="file", help="a .txt file is one text (file), or split by "
                       "line, blank (paragraphs) or any separator")
    train.add_argument("--on-error", choices=["skip", "fail"], default="skip", help="bad records: count or stop")
    train.add_argument("--vocab-size", type=int, required=True, help="the size of the vocabulary, specials included")
    train.add_argument("--pattern", default="gpt4",
                       help=f"the pre-split regex: {', '.join(PRESET_PATTERNS)} or a regex")
    train.add_argument("--min-frequency", type=int, default=1, help="merge only pairs seen at least this often")
    train.add_argument("--out", required=True, help="where to write the tokenizer (JSON)")
    add_quiet(train)
    for name in ("encode", "decode", "export-hf", "inspect"):
        parsers[name].add_argument("--tokenizer", required=True, help="a tokenizer file written by `train`")
    parsers["encode"].add_argument("--text", help="the text (default: --input or stdin)")
    parsers["encode"].add_argument("--input", help="a UTF-8 text file to encode")
    parsers["encode"].add_argument("--allow-special", action="store_true",
                                   help="recognise special tokens such as <|endoftext|> in the text")
    parsers["decode"].add_argument("ids", nargs="*", help="token ids (default: read from stdin)")
    parsers["export-hf"].add_argument("--out", required=True, help="path of the tokenizer.json to write")
    parsers["inspect"].add_argument("--sample", type=int, default=10, help="how many tokens to show")


def run(args: argparse.Namespace) -> None:
    SUBCOMMANDS[args.tokenizer_command][0](args)
