"""Read documents from .txt, .json, .jsonl and .parquet files, directories, globs and URLs.

    for doc in read_documents(["data/*.jsonl", "https://host/x.parquet"], TextSelector("text"), log):
        doc.text, doc.location          # "data/a.jsonl:17"

Formats:
    .txt .md  the whole file is one document (`txt_split="file"`), or one per line
              ("line"), or paragraphs separated by blank lines ("blank"), or pieces
              separated by any other given string
    .json     an array of records or a single record
    .jsonl    one record per line (blank lines ignored)
    .parquet  streamed one row group batch at a time, reading only the needed columns
A record is a string or an object; `TextSelector` turns an object into text: one field,
or a template such as "{title}\\n{paragraphs}" whose list-valued fields are joined by
newlines (the Tang/Song poetry JSON: a title and a list of verse lines).

Everything unusable is skipped and counted by the `SkipLog` (or is a one-line error
with on_error="fail"): invalid UTF-8 (the piece that holds it), invalid JSON (the line,
or the whole .json file), JSON strings holding a lone surrogate escape such as "\\ud800"
(the record: such a string is not Unicode text and cannot be encoded to UTF-8), records
of the wrong type, missing fields, empty files, unknown extensions and Parquet data
pages that cannot be decoded (the rest of that row group). A file-level problem counts
as one skipped record, so that records read = documents kept + records skipped.

A UTF-8 byte-order mark (EF BB BF, which Windows editors write) at the start of a file
is not text: it is dropped, so it neither breaks a JSONL file's first record nor lands
in the first document of a .txt file.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mylm_jax.data.errors import DataError, SkipLog

TEXT_EXTENSIONS = (".txt", ".md")  # plain text (Markdown is read as text)
EXTENSIONS = (*TEXT_EXTENSIONS, ".json", ".jsonl", ".parquet")
_FIELD = re.compile(r"\{(\w+)\}")
BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark
# A JSON escape of a UTF-16 surrogate (\\ud800-\\udfff): a cheap test on the raw bytes, so
# only the rare line that has one is searched for a lone (unpaired) surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Document:
    text: str
    location: str  # "file:line", "file[#index]" or "file:row N"


@dataclass(frozen=True)
class TextSelector:
    """Which text a record holds: `field`, or `template` with {field} placeholders."""

    field: str = "text"
    template: str | None = None

    @property
    def columns(self) -> list[str]:
        return _FIELD.findall(self.template) if self.template else [self.field]

    def text(self, record: Any, location: str, log: SkipLog) -> str | None:
        if isinstance(record, str):
            return record
        if not isinstance(record, dict):
            log.skip(location, f"record is {type(record).__name__}, expected an object or a string",
                     "wrong type")
            return None
        values = {}
        for name in self.columns:
            if name not in record or record[name] is None:
                log.skip(location, f"missing field '{name}'", "missing field")
                return None
            value = record[name]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                value = "\n".join(value)
            elif not isinstance(value, str):
                log.skip(location, f"field '{name}' is {type(value).__name__}, expected a string "
                         "or a list of strings", "wrong type")
                return None
            values[name] = value
        if not self.template:
            return values[self.field]
        return _FIELD.sub(lambda m: values[m.group(1)], self.template)


def expand_inputs(inputs: list[str], cache_dir: str | Path | None = None) -> list[str]:
    """Paths, directories (recursively, sorted), globs (sorted) and URLs -> a list of files.

    A path that does not exist, or a glob that matches nothing, is a user mistake: DataError.
    URLs are downloaded into `cache_dir` (see mylm_jax/data/download.py).
    """
    files: list[str] = []
    for item in inputs:
        if item.startswith(("http://", "https://")):
            from mylm_jax.data.download import download
            files.append(str(download(item, cache_dir or Path.home() / ".cache" / "mylm" / "downloads")))
        elif any(c in item for c in "*?["):
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"no files match '{item}'")
            files.extend(matches)
        elif os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).rglob("*") if p.is_file() and not p.name.startswith("."))
            if not found:
                raise DataError(f"directory '{item}' holds no files")
            files.extend(found)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise DataError(f"input not found: {item}")
    return files


def _decode(raw: bytes, location: str, log: SkipLog) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        log.skip(location, f"invalid UTF-8 at byte {e.start}", "invalid UTF-8")
        return None


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate anywhere in a parsed JSON value (json.loads lets "\\ud800"
    through as a str that no UTF-8 encoder accepts), as "U+D800", or None."""
    if isinstance(value, str):
        m = _LONE_SURROGATE.search(value)
        return f"U+{ord(m.group()):04X}" if m else None
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        return next((found for v in value if (found := _lone_surrogate(v))), None)
    return None


def _checked(location: str, record: Any, log: SkipLog) -> bool:
    """False (and the record counted as skipped) if it holds a lone surrogate."""
    found = _lone_surrogate(record)
    if found is None:  # only well-formed pairs (an emoji written as "\\ud83d\\ude00")
        return True
    log.skip(location, f"lone surrogate {found} (a \\u escape that is half of a UTF-16 pair; "
             "not valid Unicode text)", "lone surrogate")
    return False


def _txt_records(path: str, txt_split: str, log: SkipLog) -> Iterator[tuple[str, Any]]:
    data = Path(path).read_bytes()
    if data.startswith(BOM):
        data = data[len(BOM):]
    if txt_split == "file":
        spans = [(0, len(data))]
    else:  # the pieces between separators, as (start, end) byte offsets
        separator = {"line": rb"\r?\n", "blank": rb"\r?\n[ \t]*\r?\n(?:[ \t]*\r?\n)*"}.get(
            txt_split, re.escape(txt_split.encode()))
        starts, ends = [0], []
        for m in re.finditer(separator, data):
            ends.append(m.start())
            starts.append(m.end())
        spans = list(zip(starts, ends + [len(data)]))
    line, counted_to = 1, 0
    for start, end in spans:
        line += data.count(b"\n", counted_to, start)
        counted_to = start
        raw = data[start:end]
        if not raw.strip():
            continue
        location = f"{path}:{line}"
        text = _decode(raw, location, log)
        if text is not None:
            yield location, text


def _json_records(path: str, log: SkipLog) -> Iterator[tuple[str, Any]]:
    raw = Path(path).read_bytes().removeprefix(BOM)
    try:
        value = json.loads(raw)
    except UnicodeDecodeError as e:
        log.skip(path, f"invalid UTF-8 at byte {e.start}", "invalid UTF-8")
        return
    except json.JSONDecodeError as e:
        log.skip(f"{path}:{e.lineno}", f"invalid JSON ({e.msg}, column {e.colno})", "invalid JSON")
        return
    escapes = _SURROGATE_ESCAPE.search(raw) is not None  # then each record is searched
    if isinstance(value, dict):
        if not escapes or _checked(path, value, log):
            yield path, value
    elif isinstance(value, list):
        for i, record in enumerate(value):
            if not escapes or _checked(f"{path}[#{i}]", record, log):
                yield f"{path}[#{i}]", record
    else:
        log.skip(path, f"top level is {type(value).__name__}, expected an array or an object", "wrong type")


def _jsonl_records(path: str, log: SkipLog) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1:
                raw = raw.removeprefix(BOM)
            if not raw.strip():
                continue
            location = f"{path}:{number}"
            line = _decode(raw, location, log)
            if line is None:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                log.skip(location, f"invalid JSON ({e.msg}, column {e.colno})", "invalid JSON")
                continue
            if _SURROGATE_ESCAPE.search(raw) is None or _checked(location, record, log):
                yield location, record


def _parquet_records(path: str, columns: list[str], log: SkipLog) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        log.skip(path, f"not a readable Parquet file ({type(e).__name__})", "invalid Parquet")
        return
    names = parquet.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        log.skip(path, f"no column '{missing[0]}' (columns: {', '.join(names)})", "missing field")
        return
    row = 0
    for group in range(parquet.num_row_groups):
        group_end = row + parquet.metadata.row_group(group).num_rows
        try:  # streamed a batch at a time: a row group can be larger than memory allows
            for batch in parquet.iter_batches(batch_size=4096, row_groups=[group], columns=columns):
                for record in batch.to_pylist():
                    yield f"{path}:row {row}", record
                    row += 1
        except Exception as e:  # a corrupt data page under a valid footer (pyarrow: OSError, ArrowException)
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.skip(f"{path}:row {row}", f"row group {group} cannot be decoded from here on, rows "
                     f"{row}-{group_end - 1} lost ({message})", "invalid Parquet")
        row = group_end  # rows keep their numbers in the file, whatever was lost before them


def read_records(path: str, log: SkipLog, txt_split: str = "file",
                 columns: list[str] | None = None) -> Iterator[tuple[str, Any]]:
    """(location, record) for every record of one file; unusable ones go to `log`."""
    ext = Path(path).suffix.lower()
    if ext not in EXTENSIONS:
        log.skip(path, f"unknown extension '{ext}' (expected {', '.join(EXTENSIONS)})", "unknown extension")
        return
    if os.path.getsize(path) == 0:
        log.skip(path, "empty file", "empty file")
        return
    if ext in TEXT_EXTENSIONS:
        yield from _txt_records(path, txt_split, log)
    elif ext == ".json":
        yield from _json_records(path, log)
    elif ext == ".jsonl":
        yield from _jsonl_records(path, log)
    else:
        yield from _parquet_records(path, columns or ["text"], log)


def read_documents(inputs: list[str], selector: TextSelector = TextSelector(), log: SkipLog | None = None,
                   txt_split: str = "file", cache_dir: str | Path | None = None) -> Iterator[Document]:
    """Every document of every input, in order; see the module docstring."""
    log = log if log is not None else SkipLog()
    for path in expand_inputs(inputs, cache_dir):
        for location, record in read_records(path, log, txt_split, selector.columns):
            text = selector.text(record, location, log)
            if text is not None:
                yield Document(text, location)
