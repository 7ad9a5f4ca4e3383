"""`mylm data prepare`: read -> clean -> tokenize (in parallel processes) -> token shards.

    inputs (files, dirs, globs, URLs)
      -> readers.read_documents      (bad records skipped and counted, or a one-line error)
      -> clean.Cleaner               (normalise, filter, dedup, downsample; counted per step)
      -> encode                      (in order; + the EOS token if --eos): encoder
                                     "python" (Tokenizer.encode, the reference; "auto") or
                                     "hf" (hf_encode.py: HF `tokenizers` does the merges);
                                     the same ids. Both run in worker processes (--workers;
                                     an input under POOL_MIN_BYTES stays in this process
                                     unless --workers is given)
      -> train / val split           ("document": each document to val with probability
                                      val_fraction, from a seeded generator; "tail": the last
                                      val_fraction of the token stream, nanoGPT style)
      -> shards.ShardWriter          (atomic files; then the tokenizer's copy,
                                      tokenizer.json; metadata.json last)

The metadata records the tokenizer (its copy beside the shards and its fingerprint), the
counts, the sources (with sizes), the reader's skip report and the cleaning report. A
rerun with the same settings and unchanged inputs finds metadata.json and returns at
once; changed settings rebuild the directory from scratch, removing the files of the
earlier attempt first, so stale shards never mix with new ones.

The output directory is checked before any work (a long run must not find out at its
end that it cannot write). A run that stops early (Ctrl-C, an error with
on_error="fail", no documents left) removes what it wrote, so the directory never holds
a half dataset; the worker processes ignore Ctrl-C and are stopped by this process, so
an interrupt is one KeyboardInterrupt here, not one traceback per worker.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from mylm_jax.data.clean import DEFAULT_SPEC, Cleaner
from mylm_jax.data.errors import DataError, OnError, SkipLog
from mylm_jax.data.hf_encode import ENCODERS, HFEncoder, resolve_encoder
from mylm_jax.data.readers import TextSelector, expand_inputs, read_documents
from mylm_jax.data.shards import (METADATA, TMP_MARK, TOKENIZER_FILE, ShardWriter, read_metadata, token_dtype,
                                   write_metadata)

CHUNK_DOCS = 256  # documents per task sent to a worker process
HF_BATCH_DOCS = 2048  # documents per batch of the hf encoder (its new chunks: one encode_batch)
HF_POOL_DOCS = 1024  # documents per task of an hf worker process
# Below this many bytes of input, the default --workers stays in one process: starting
# workers (fresh interpreters, their imports, the tokenizer) costs ~0.3-0.5 s, as long as
# one process needs for a MB or two; measured on 2 cores, one process and two broke even
# at ~4 MB of English text (docs/data.md).
POOL_MIN_BYTES = 4_000_000


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
    encoder: str = "auto"  # "python" | "hf" | "auto" (= python, the faster here: hf_encode.py): same ids

    def __post_init__(self):
        if not 0 <= self.val_fraction < 1:
            raise DataError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.split not in ("document", "tail"):
            raise DataError(f"split must be 'document' or 'tail', got {self.split!r}")
        if self.encoder not in ENCODERS:
            raise DataError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")


_worker_encode = None  # this process's encoder: texts -> their documents, set by _init_worker


def _init_worker(tokenizer, encoder: str, in_pool: bool = False, eos: bool = False) -> None:
    """Each worker gets the tokenizer itself (pickled), not its path: the file could change
    while the run goes on, and the ids must come from the tokenizer the metadata records.
    A worker returns each document as it is stored (its ids, + EOS, in the shards' dtype):
    the parent, which reads, cleans and writes for every worker, only files them."""
    global _worker_encode
    dtype, tail = token_dtype(tokenizer.vocab_size), [tokenizer.eos_id] if eos else []
    if in_pool:  # Ctrl-C reaches every process of the terminal; the parent stops the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # The processes are the parallelism: one HF thread each (rayon reads this once, at
        # its first use, which is after this line), so they do not compete for the cores.
        os.environ["RAYON_NUM_THREADS"] = "1"
    if encoder == "hf":
        hf = HFEncoder(tokenizer)
        _worker_encode = lambda texts: hf.encode_batch(texts, tail, dtype)  # noqa: E731
    else:
        _worker_encode = lambda texts: [np.asarray(tokenizer.encode(t) + tail, dtype) for t in texts]  # noqa: E731


def _encode_chunk(texts: list[str]) -> list[np.ndarray]:
    return _worker_encode(texts)


def _chunks(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk = []
    for t in texts:
        chunk.append(t)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _in_order(pool, chunks: Iterator[list[str]], window: int) -> Iterator[list[np.ndarray]]:
    """The pool's encodings of `chunks`, in order, with at most `window` chunks in flight.
    (Pool.imap would read the whole corpus into its task queue ahead of the workers; here
    this process reads the next chunk while the workers encode the previous ones, and the
    memory held is a few chunks whatever the corpus size.)"""
    pending = deque()
    for chunk in chunks:
        pending.append(pool.apply_async(_encode_chunk, (chunk,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _fingerprint(settings: PrepareSettings, sources: list[dict], tokenizer_id: str) -> str:
    # Neither where nor how fast (workers, encoder: the same ids) makes another dataset.
    fields = asdict(settings) | {"out_dir": None, "workers": None}
    fields.pop("encoder")
    key = json.dumps({"settings": fields,
                      "sources": sources, "tokenizer": tokenizer_id}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def _remove_outputs(out_dir: Path) -> None:
    """The dataset's files and temporary leftovers. Not tokenizer.json: it may be the very
    file --tokenizer names; it is rewritten (atomically) just before metadata.json."""
    for p in out_dir.iterdir():
        if p.name == METADATA or p.name.endswith((".tokens.npy", ".docs.npy")) or TMP_MARK in p.name:
            p.unlink()


def check_out_dir(out_dir: Path) -> bool:
    """Create `out_dir` if needed and prove it writable, before any work; True if created."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir}: exists and is not a directory")
    created = not out_dir.exists()
    probe = out_dir / f".probe{TMP_MARK}-{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"--out {out_dir}: cannot write there ({e.strerror or e})") from None
    return created


def _discard(out_dir: Path, created: bool) -> None:
    """Remove the output directory if this run created it and it is (again) empty."""
    if created and out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()


def prepare(settings: PrepareSettings, progress: bool = True) -> dict:
    """Build the dataset (or find it up to date); returns its metadata."""
    from mylm_jax.tokenizer import Tokenizer

    start = time.time()
    out_dir = Path(settings.out_dir)
    created = check_out_dir(out_dir)
    try:
        tokenizer = Tokenizer.load(settings.tokenizer)
        files = expand_inputs(list(settings.inputs), settings.cache_dir)
    except BaseException:  # a missing input, a failed download, Ctrl-C: no empty directory left behind
        _discard(out_dir, created)
        raise
    sources = [{"path": f, "bytes": os.path.getsize(f), "mtime": int(os.path.getmtime(f))} for f in files]
    settings_hash = _fingerprint(settings, sources, tokenizer.fingerprint())
    if (out_dir / METADATA).is_file():
        try:
            meta = read_metadata(out_dir)
            carried = (out_dir / meta["tokenizer"].get("file", "-")).is_file()  # older datasets: rebuild
            if meta.get("settings_hash") == settings_hash and carried:
                return meta | {"up_to_date": True}
        except DataError:
            pass
    _remove_outputs(out_dir)
    try:
        return _build(settings, tokenizer, files, sources, settings_hash, out_dir, start, progress)
    except BaseException:  # Ctrl-C, on_error="fail", nothing left: no half dataset stays behind
        _remove_outputs(out_dir)
        copy = out_dir / TOKENIZER_FILE
        if copy.resolve() != Path(settings.tokenizer).resolve():  # ours, not the user's --tokenizer
            copy.unlink(missing_ok=True)
        _discard(out_dir, created)
        raise


def _build(settings: PrepareSettings, tokenizer, files: list[str], sources: list[dict], settings_hash: str,
           out_dir: Path, start: float, progress: bool) -> dict:
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
    encoder = resolve_encoder(settings.encoder)
    if not settings.workers and sum(s["bytes"] for s in sources) < POOL_MIN_BYTES:
        workers = 1  # a small input is done before worker processes would have started
    pool = None
    if workers > 1:
        # One encoder per process, documents in chunks, results in input order: the ids
        # and the split are the same as in one process. (With hf, one process alone is
        # bound by its Python split and id assembly; HF's own threads only merge the new
        # chunks, so processes, not threads, use the cores.)
        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer, encoder, True, settings.eos))
        size = HF_POOL_DOCS if encoder == "hf" else CHUNK_DOCS
        encoded = _in_order(pool, _chunks(counted(texts), size), 2 * workers)
    else:
        if encoder == "hf" and settings.workers:
            # HF's threads merge the new chunks of each batch (hf_encode.py); --workers sets
            # their number unless the environment already does.
            os.environ.setdefault("RAYON_NUM_THREADS", str(settings.workers))
        _init_worker(tokenizer, encoder, eos=settings.eos)
        encoded = map(_encode_chunk, _chunks(counted(texts), HF_BATCH_DOCS if encoder == "hf" else CHUNK_DOCS))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(unit=" docs", desc=f"prepare {out_dir.name}", mininterval=0.5)
    try:
        for chunk in encoded:
            for ids in chunk:
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
    # The dataset carries its tokenizer, found relative to itself (shards.dataset_tokenizer):
    # a path relative to where this command ran would be lost from any other directory.
    try:
        tokenizer.save(out_dir / TOKENIZER_FILE)
    except ValueError as e:  # TokenizerError: cannot write
        raise DataError(str(e)) from None
    elapsed = time.time() - start
    return write_metadata(
        out_dir, writers, settings.split, settings.val_fraction,
        tokenizer={"fingerprint": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size,
                   "file": TOKENIZER_FILE, "path": str((out_dir / TOKENIZER_FILE).resolve()),
                   "source": str(Path(settings.tokenizer).resolve()),
                   "eos_id": tokenizer.special_tokens.get("<|endoftext|>"),
                   "bos_id": tokenizer.special_tokens.get("<|bos|>")},
        eos_appended=settings.eos, encoder=encoder, sources=sources,
        reader={"records": cleaner.documents_in + log.total, "documents": cleaner.documents_in, **log.report()},
        cleaning=cleaner.report(), text_bytes=text_bytes, seconds=round(elapsed, 2),
        settings=asdict(settings), settings_hash=settings_hash)
