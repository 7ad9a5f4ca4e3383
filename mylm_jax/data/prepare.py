"""`mylm data prepare`: read -> clean -> tokenize (in parallel processes) -> token shards.

    inputs (files, dirs, globs, URLs)
      -> readers.read_documents      (bad records skipped and counted, or a one-line error)
      -> clean.Cleaner               (normalise, filter, dedup, downsample; counted per step)
      -> tokenizer.encode            (worker processes, in order; + the EOS token if --eos)
      -> train / val split           ("document": each document to val with probability
                                      val_fraction, from a seeded generator; "tail": the last
                                      val_fraction of the token stream, nanoGPT style)
      -> shards.ShardWriter          (atomic files; metadata.json last)

The metadata records the tokenizer's fingerprint, the counts, the sources (with sizes),
the reader's skip report and the cleaning report. A rerun with the same settings and
unchanged inputs finds metadata.json and returns at once; an interrupted run (no
metadata) or changed settings rebuild the directory from scratch, removing the files
of the earlier attempt first, so stale shards never mix with new ones.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from mylm_jax.data.clean import DEFAULT_SPEC, Cleaner
from mylm_jax.data.errors import DataError, OnError, SkipLog
from mylm_jax.data.readers import TextSelector, expand_inputs, read_documents
from mylm_jax.data.shards import METADATA, ShardWriter, read_metadata, token_dtype, write_metadata

CHUNK_DOCS = 256  # documents per task sent to a worker process


@dataclass(frozen=True)
class PrepareSettings:
    inputs: tuple[str, ...]
    out_dir: str
    tokenizer: str  # path of a saved tokenizer
    field: str = "text"
    template: str | None = None
    txt_split: str = "file"
    clean: str = DEFAULT_SPEC
    seed: int = 0
    split: Literal["document", "tail"] = "document"
    val_fraction: float = 0.01
    eos: bool = True
    shard_tokens: int = 50_000_000
    workers: int = 0  # 0: os.cpu_count()
    on_error: OnError = "skip"
    cache_dir: str | None = None

    def __post_init__(self):
        if not 0 <= self.val_fraction < 1:
            raise DataError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.split not in ("document", "tail"):
            raise DataError(f"split must be 'document' or 'tail', got {self.split!r}")


_worker_tokenizer = None


def _init_worker(path: str) -> None:
    global _worker_tokenizer
    from mylm_jax.tokenizer import Tokenizer
    _worker_tokenizer = Tokenizer.load(path)


def _encode_chunk(texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(_worker_tokenizer.encode(t), np.int64) for t in texts]


def _chunks(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk = []
    for t in texts:
        chunk.append(t)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _fingerprint(settings: PrepareSettings, sources: list[dict], tokenizer_id: str) -> str:
    key = json.dumps({"settings": asdict(settings) | {"out_dir": None, "workers": None},
                      "sources": sources, "tokenizer": tokenizer_id}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def _remove_outputs(out_dir: Path) -> None:
    for p in out_dir.iterdir():
        if p.name == METADATA or p.name.endswith((".tokens.npy", ".docs.npy", ".tmp")):
            p.unlink()


def prepare(settings: PrepareSettings, progress: bool = True) -> dict:
    """Build the dataset (or find it up to date); returns its metadata."""
    from mylm_jax.tokenizer import Tokenizer

    start = time.time()
    tokenizer = Tokenizer.load(settings.tokenizer)
    files = expand_inputs(list(settings.inputs), settings.cache_dir)
    sources = [{"path": f, "bytes": os.path.getsize(f), "mtime": int(os.path.getmtime(f))} for f in files]
    settings_hash = _fingerprint(settings, sources, tokenizer.fingerprint())
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / METADATA).is_file():
        try:
            meta = read_metadata(out_dir)
            if meta.get("settings_hash") == settings_hash:
                return meta | {"up_to_date": True}
        except DataError:
            pass
    _remove_outputs(out_dir)

    log = SkipLog(settings.on_error)
    cleaner = Cleaner(settings.clean, settings.seed)
    selector = TextSelector(settings.field, settings.template)
    texts = cleaner(d.text for d in read_documents(files, selector, log, settings.txt_split))
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {"train": ShardWriter(out_dir, "train", dtype, settings.shard_tokens)}
    if settings.split == "document" and settings.val_fraction > 0:
        writers["val"] = ShardWriter(out_dir, "val", dtype, settings.shard_tokens)
    to_val = np.random.default_rng(settings.seed)
    text_bytes = 0

    def counted(texts):
        nonlocal text_bytes
        for t in texts:
            text_bytes += len(t.encode("utf-8", "surrogatepass"))
            yield t

    workers = settings.workers or os.cpu_count() or 1
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (settings.tokenizer,))
        encoded = pool.imap(_encode_chunk, _chunks(counted(texts), CHUNK_DOCS))
    else:
        _init_worker(settings.tokenizer)
        encoded = map(_encode_chunk, _chunks(counted(texts), CHUNK_DOCS))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(unit=" docs", desc=f"prepare {out_dir.name}", mininterval=0.5)
    try:
        for chunk in encoded:
            for ids in chunk:
                if settings.eos:
                    ids = np.append(ids, tokenizer.eos_id)
                split = "val" if "val" in writers and to_val.random() < settings.val_fraction else "train"
                writers[split].add(ids)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.terminate()
    if writers["train"].num_documents == 0:
        raise DataError(f"no documents left to write from {', '.join(settings.inputs)} "
                        f"({log.summary()}; cleaning dropped {dict(cleaner.dropped)})")
    elapsed = time.time() - start
    return write_metadata(
        out_dir, writers, settings.split, settings.val_fraction,
        tokenizer={"fingerprint": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size,
                   "path": str(settings.tokenizer), "eos_id": tokenizer.special_tokens.get("<|endoftext|>"),
                   "bos_id": tokenizer.special_tokens.get("<|bos|>")},
        eos_appended=settings.eos, sources=sources,
        reader={"records": cleaner.documents_in + log.total, "documents": cleaner.documents_in, **log.report()},
        cleaning=cleaner.report(), text_bytes=text_bytes, seconds=round(elapsed, 2),
        settings=asdict(settings), settings_hash=settings_hash)
