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
once.

The dataset is built beside its directory, in `.NAME.tmp-PID` (mylm_jax/ownership.py), and
swapped in only when complete, so the directory always holds a whole dataset or none:
a dataset already there that other inputs or settings would replace needs `overwrite`
(`--overwrite`), and stays whole until the new one is complete; Ctrl-C, an error, a full
disk or kill -9 midway leave it as it was (a killed run's sibling is removed by the next
run). `--out` must be new, empty, or a MyLM dataset (marked `.mylm`, or, made before
markers, with a MyLM metadata.json or holding only a dataset's files); files of the
user's there are carried into the new dataset, never deleted. Everything is checked
before any work (a long run must not find out at its end that it cannot write). The
worker processes ignore Ctrl-C (this process stops them, so an interrupt is one
KeyboardInterrupt here, not one traceback per worker) and end with this process, even
when it is killed (`_init_worker`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
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
from mylm_jax.data.shards import (METADATA, TOKENIZER_FILE, ShardWriter, is_dataset_file, read_metadata,
                                   token_dtype, write_metadata)
from mylm_jax.ownership import build_beside, clear_stale, discard, marked_as, refusal, split_entries, swap_in

CHUNK_DOCS = 256  # documents per task sent to a worker process
HF_BATCH_DOCS = 2048  # documents per batch of the hf encoder (its new chunks: one encode_batch)
HF_POOL_DOCS = 1024  # documents per task of an hf worker process
# Below this many bytes of input, the default --workers stays in one process: starting
# workers (fresh interpreters, their imports, the tokenizer) costs ~0.3-0.5 s, as long as
# one process needs for a MB or two; measured on 2 cores, one process and two broke even
# at ~4 MB of English text (docs/data.md).
POOL_MIN_BYTES = 4_000_000
# Tests only: a worker sleeps this many seconds before each chunk after its first, so that a
# test can kill `prepare` while its workers are busy (tests/test_data_prepare.py).
SLOW_CHUNKS = "MYLM_TEST_SLOW_CHUNKS"


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
    overwrite: bool = False  # replace a dataset made from other inputs or settings (not a setting of it)

    def __post_init__(self):
        if not 0 <= self.val_fraction < 1:
            raise DataError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.split not in ("document", "tail"):
            raise DataError(f"split must be 'document' or 'tail', got {self.split!r}")
        if self.encoder not in ENCODERS:
            raise DataError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")


_worker_encode = None  # this process's encoder: texts -> their documents, set by _init_worker
_chunks_done = 0


def _end_with_parent(parent: int) -> None:
    """A worker of a parent that dies (kill -9 included) exits at once instead of encoding the
    chunks still queued: Linux delivers SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG);
    elsewhere a thread watches the parent's pid."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        else:
            if os.getppid() != parent:  # died before the line above took effect
                os._exit(1)
            return

    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _init_worker(tokenizer, encoder: str, parent: int | None = None, eos: bool = False) -> None:
    """Each worker gets the tokenizer itself (pickled), not its path: the file could change
    while the run goes on, and the ids must come from the tokenizer the metadata records.
    A worker returns each document as it is stored (its ids, + EOS, in the shards' dtype):
    the parent, which reads, cleans and writes for every worker, only files them.
    parent: the pid of the process whose pool this worker is in (None: in this process)."""
    global _worker_encode
    dtype, tail = token_dtype(tokenizer.vocab_size), [tokenizer.eos_id] if eos else []
    if parent is not None:  # Ctrl-C reaches every process of the terminal; the parent stops the pool
        _end_with_parent(parent)
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
    global _chunks_done
    if _chunks_done and (pause := os.environ.get(SLOW_CHUNKS)):
        time.sleep(float(pause))
    _chunks_done += 1
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
    fields.pop("overwrite")
    key = json.dumps({"settings": fields,
                      "sources": sources, "tokenizer": tokenizer_id}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


def check_out_dir(out_dir: Path) -> dict | None:
    """Refuse an --out that is not new, empty or a MyLM dataset, before any work; returns the
    metadata of the complete dataset there (None: none)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir}: exists and is not a directory")
    meta = None
    if (out_dir / METADATA).is_file():
        try:
            meta = read_metadata(out_dir)
        except DataError:  # a damaged or foreign metadata.json: a dataset only if marked
            pass
    _, foreign = split_entries(out_dir, is_dataset_file)
    if not marked_as(out_dir, "dataset") and meta is None and foreign:
        raise refusal(foreign[0], "replace the directory that holds",
                      "--out must be a new or empty directory, or a MyLM dataset")
    return meta


def kept_note(out_dir: Path, earlier: dict | None) -> str:
    """What a failed or interrupted run left in --out."""
    return (f"the earlier dataset in {out_dir} is unchanged" if earlier is not None
            else f"no dataset was written to {out_dir}")


def _differences(meta: dict, settings: PrepareSettings, sources: list[dict], fingerprint: str) -> str:
    """What makes a rerun another dataset, in a few words."""
    then = meta.get("settings", {})
    parts = []
    if [s["path"] for s in meta.get("sources", [])] != [s["path"] for s in sources]:
        parts.append("other inputs")
    elif meta.get("sources") != sources:
        parts.append("its inputs changed since (size or time)")
    if meta["tokenizer"]["fingerprint"] != fingerprint:
        parts.append("another tokenizer")
    now = asdict(settings)
    changed = sorted(k for k in now if k not in ("inputs", "out_dir", "tokenizer", "workers", "encoder", "overwrite")
                     and k in then and then[k] != now[k])
    if changed:
        parts.append("settings " + ", ".join(changed))
    return "; ".join(parts) or "other settings"


def prepare(settings: PrepareSettings, progress: bool = True) -> dict:
    """Build the dataset (or find it up to date); returns its metadata, with "replaced" and
    "kept" (the names of the earlier dataset's files removed, of the user's files kept)."""
    from mylm_jax.tokenizer import Tokenizer

    start = time.time()
    out_dir = Path(settings.out_dir)
    earlier = check_out_dir(out_dir)
    target = out_dir.resolve()
    clear_stale(target, is_dataset_file, warn=lambda text: print(f"warning: {text}", file=sys.stderr))
    tokenizer = Tokenizer.load(settings.tokenizer)
    files = expand_inputs(list(settings.inputs), settings.cache_dir)
    sources = [{"path": f, "bytes": os.path.getsize(f), "mtime": int(os.path.getmtime(f))} for f in files]
    settings_hash = _fingerprint(settings, sources, tokenizer.fingerprint())
    if earlier is not None:
        carried = (out_dir / earlier["tokenizer"].get("file", "-")).is_file()  # older datasets: rebuild
        if earlier.get("settings_hash") == settings_hash and carried:
            return earlier | {"up_to_date": True}
        if not settings.overwrite:
            raise DataError(f"{out_dir} already holds a dataset that differs "
                            f"({_differences(earlier, settings, sources, tokenizer.fingerprint())}); add --overwrite "
                            "to replace it (it stays whole until the new one is complete)")
    built = build_beside(target, "dataset")
    try:
        meta = _build(settings, tokenizer, files, sources, settings_hash, built, out_dir, start, progress)
    except (DataError, OSError) as e:  # on_error="fail", nothing left, a full disk: one line, and what was kept
        discard(built)
        reason = e if isinstance(e, DataError) else f"{out_dir}: cannot write ({e.strerror or e})"
        raise DataError(f"{reason}; {kept_note(out_dir, earlier)}") from None
    except BaseException:  # Ctrl-C: no half dataset stays behind
        discard(built)
        raise
    replaced, kept = swap_in(target, built, is_dataset_file)
    return meta | {"replaced": replaced, "kept": kept}


def _build(settings: PrepareSettings, tokenizer, files: list[str], sources: list[dict], settings_hash: str,
           built: Path, out_dir: Path, start: float, progress: bool) -> dict:
    """Write the dataset into `built`, the directory that will become `out_dir`."""
    log = SkipLog(settings.on_error)
    cleaner = Cleaner(settings.clean, settings.seed)
    selector = TextSelector(settings.field, settings.template)
    texts = cleaner(d.text for d in read_documents(files, selector, log, settings.txt_split))
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {"train": ShardWriter(built, "train", dtype, settings.shard_tokens)}
    if settings.split == "document" and settings.val_fraction > 0:
        writers["val"] = ShardWriter(built, "val", dtype, settings.shard_tokens)
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
        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker,
                                                         (tokenizer, encoder, os.getpid(), settings.eos))
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
        tokenizer.save(built / TOKENIZER_FILE)
    except ValueError as e:  # TokenizerError: cannot write
        raise DataError(str(e)) from None
    elapsed = time.time() - start
    recorded = asdict(settings)
    recorded.pop("overwrite")
    return write_metadata(
        built, writers, settings.split, settings.val_fraction,
        tokenizer={"fingerprint": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size,
                   "file": TOKENIZER_FILE, "path": str((out_dir / TOKENIZER_FILE).resolve()),
                   "source": str(Path(settings.tokenizer).resolve()),
                   "eos_id": tokenizer.special_tokens.get("<|endoftext|>"),
                   "bos_id": tokenizer.special_tokens.get("<|bos|>")},
        eos_appended=settings.eos, encoder=encoder, sources=sources,
        reader={"records": cleaner.documents_in + log.total, "documents": cleaner.documents_in, **log.report()},
        cleaning=cleaner.report(), text_bytes=text_bytes, seconds=round(elapsed, 2),
        settings=recorded, settings_hash=settings_hash)
