"""Token shards on disk: write them atomically, read them back as memory maps.

A prepared dataset is a directory:

    metadata.json                 written last: its presence means the set is complete
    tokenizer.json                the dataset's own copy of the tokenizer its ids come from
    train_00000.tokens.npy        token ids of many documents back to back (uint16 if the
                                  vocab fits in 65,536 ids, else uint32)
    train_00000.docs.npy          int64 offsets [n_docs + 1]: document i is tokens[o[i]:o[i+1]]
    val_00000.tokens.npy ...

Every file is written under a temporary name, flushed to disk and renamed into place
(os.replace is atomic; mylm_jax/fileio.py), so an interrupted run or a full disk never
leaves a half shard under a final name. A write that fails is a one-line DataError.

The dataset carries its tokenizer: `metadata.json` names the copy beside the shards
("file", relative to the dataset directory) and its fingerprint, so the dataset can be
used from any working directory and moved as a whole (`dataset_tokenizer`).

A dataset's fingerprint (`dataset_fingerprint`) is a hash of what its metadata says of its
contents: each shard's size and the sha256 of its tokens and offsets (computed as they are
written), the split, the dtype and the tokenizer's fingerprint. A run records it in every
checkpoint, and a resume over a dataset that was replaced since is refused
(mylm_jax/train/run_dir.py). An older dataset without the hashes gets one from the counts.

Splits are "document" (each document is in train or in val) or "tail" (nanoGPT style:
one token stream, the last `val_fraction` of its tokens is val, cutting a document if
it must). A tail split is a view: the shards hold one stream and `TokenShards` clips
it to [0, cut) or [cut, end).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mylm_jax.data.errors import DataError
from mylm_jax.fileio import atomic_write

FORMAT, VERSION = "mylm-token-shards", 1
METADATA = "metadata.json"
TOKENIZER_FILE = "tokenizer.json"
TMP_MARK = ".tmp"  # every temporary name holds it (".name.tmp-PID"): leftovers are easy to find


def is_dataset_file(path: Path) -> bool:
    """A file `data prepare` writes in a dataset directory (or a temporary one it left)."""
    name = path.name
    temporary = (name.startswith(".") and f"{TMP_MARK}-" in name) or name.endswith(TMP_MARK)
    return (name in (METADATA, TOKENIZER_FILE) or name.endswith((".tokens.npy", ".docs.npy"))
            or temporary) and not path.is_dir()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def atomic_save(path: Path, array: np.ndarray) -> None:
    """np.save under a temporary name, fsync, rename: the shard appears whole or not at all.
    (fileio.atomic_write takes bytes; a shard is streamed to the file instead, so a large
    one is not held twice in memory.)"""
    tmp = path.with_name(f".{path.name}{TMP_MARK}-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only directory: say which file, no traceback
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:  # Ctrl-C: no temporary file left behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: dict) -> None:
    try:
        atomic_write(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    except OSError as e:
        raise DataError(f"{path}: cannot write ({e.strerror or e})") from None


class ShardWriter:
    """Append documents (arrays of token ids) to one split; a shard is flushed at `shard_tokens`."""

    def __init__(self, out_dir: str | Path, split: str, dtype: np.dtype, shard_tokens: int = 50_000_000):
        self.out_dir, self.split, self.dtype, self.shard_tokens = Path(out_dir), split, dtype, shard_tokens
        self.shards: list[dict] = []
        self._docs: list[np.ndarray] = []
        self._buffered = 0
        self.num_tokens = self.num_documents = 0

    def add(self, tokens: np.ndarray) -> None:
        self._docs.append(np.asarray(tokens, self.dtype))
        self._buffered += len(tokens)
        self.num_tokens += len(tokens)
        self.num_documents += 1
        if self._buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self._docs:
            return
        name = f"{self.split}_{len(self.shards):05d}"
        offsets = np.zeros(len(self._docs) + 1, np.int64)
        np.cumsum([len(d) for d in self._docs], out=offsets[1:])
        tokens = np.concatenate(self._docs)
        atomic_save(self.out_dir / f"{name}.tokens.npy", tokens)
        atomic_save(self.out_dir / f"{name}.docs.npy", offsets)
        digest = hashlib.sha256(memoryview(tokens).cast("B"))
        digest.update(memoryview(offsets).cast("B"))
        self.shards.append({"name": name, "num_tokens": int(offsets[-1]), "num_documents": len(self._docs),
                            "sha256": digest.hexdigest()})
        self._docs, self._buffered = [], 0

    def summary(self) -> dict:
        self.flush()
        return {"shards": self.shards, "num_tokens": self.num_tokens, "num_documents": self.num_documents}


def write_metadata(out_dir: str | Path, writers: dict[str, ShardWriter], split_mode: str = "document",
                   val_fraction: float = 0.0, **info) -> dict:
    """Flush the writers and write metadata.json last (the mark of a complete dataset)."""
    meta = {"format": FORMAT, "version": VERSION,
            "split": {"mode": split_mode, "val_fraction": val_fraction},
            "splits": {name: w.summary() for name, w in writers.items()},
            "dtype": str(next(iter(writers.values())).dtype), **info}
    atomic_write_json(Path(out_dir) / METADATA, meta)
    return meta


def dataset_fingerprint(meta: dict) -> str:
    """What a dataset holds, as one hash of its metadata (see the module's docstring)."""
    contents = {"splits": meta["splits"], "split": meta["split"], "dtype": meta["dtype"],
                "tokenizer": meta["tokenizer"]["fingerprint"], "eos": meta.get("eos_appended")}
    return hashlib.sha256(json.dumps(contents, sort_keys=True).encode()).hexdigest()


def dataset_tokenizer(data_dir: str | Path, meta: dict):
    """(Tokenizer or None, the path it was read from, a note or None): the tokenizer the
    dataset's ids come from.

    A dataset made by this version carries a copy (meta["tokenizer"]["file"], relative to
    the dataset): that copy must load and have the recorded fingerprint, or the dataset is
    broken (DataError). An older dataset names only the path `data prepare` was given,
    relative to where it ran; that is tried as it is, and if it is missing, unreadable or a
    different tokenizer (retrained since), the answer is None with a note, never a wrong one.
    """
    from mylm_jax.tokenizer import Tokenizer, TokenizerError

    info = meta["tokenizer"]
    if info.get("file"):
        path = Path(data_dir) / info["file"]
        try:
            tokenizer = Tokenizer.load(path)
        except TokenizerError as e:
            raise DataError(f"{data_dir}: the dataset's tokenizer copy is unusable ({e})") from None
        if tokenizer.fingerprint() != info["fingerprint"]:
            raise DataError(f"{path}: tokenizer {tokenizer.fingerprint()[:12]}... is not the one the dataset was "
                            f"made with ({info['fingerprint'][:12]}...); the file was replaced")
        return tokenizer, str(path.resolve()), None
    path = info.get("path", "")
    try:
        tokenizer = Tokenizer.load(path)
    except TokenizerError as e:
        return None, path, f"the dataset's tokenizer is not readable ({e})"
    if tokenizer.fingerprint() != info["fingerprint"]:
        return None, path, (f"the dataset's tokenizer {path} is now another tokenizer ({tokenizer.fingerprint()[:12]}"
                            f"... not {info['fingerprint'][:12]}...)")
    return tokenizer, path, None


def read_metadata(data_dir: str | Path) -> dict:
    path = Path(data_dir) / METADATA
    if not path.is_file():
        raise DataError(f"{data_dir}: no {METADATA}; not a prepared dataset, or its preparation did "
                        "not finish (run `mylm data prepare` again)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"{path}: expected format {FORMAT} version {VERSION}, "
                        f"got {meta.get('format')} {meta.get('version')}")
    return meta


@dataclass
class TokenShards:
    """One split of a prepared dataset: documents as (shard, start, length), tokens memory-mapped."""

    data_dir: Path
    split: str
    tokens: list[np.ndarray]  # per shard
    doc_shard: np.ndarray  # [n_docs] which shard
    doc_start: np.ndarray  # [n_docs] offset in that shard
    doc_length: np.ndarray  # [n_docs]
    metadata: dict

    @classmethod
    def open(cls, data_dir: str | Path, split: str = "train") -> "TokenShards":
        data_dir = Path(data_dir)
        meta = read_metadata(data_dir)
        mode = meta["split"]["mode"]
        stored = "train" if mode == "tail" else split
        if split not in ("train", "val") or stored not in meta["splits"]:
            raise DataError(f"{data_dir}: no split '{split}' (has {', '.join(meta['splits'])})")
        tokens, shard, start, length = [], [], [], []
        for i, info in enumerate(meta["splits"][stored]["shards"]):
            tokens.append(np.load(data_dir / f"{info['name']}.tokens.npy", mmap_mode="r"))
            offsets = np.load(data_dir / f"{info['name']}.docs.npy")
            shard.append(np.full(len(offsets) - 1, i, np.int32))
            start.append(offsets[:-1])
            length.append(np.diff(offsets))
        cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
        shards = cls(data_dir, split, tokens, cat(shard, np.int32), cat(start, np.int64),
                     cat(length, np.int64), meta)
        if mode == "tail":
            shards._clip_to_tail(split, meta["split"]["val_fraction"])
        return shards

    def _clip_to_tail(self, split: str, val_fraction: float) -> None:
        """Keep the stream positions [0, cut) for train or [cut, end) for val."""
        ends = np.cumsum(self.doc_length)
        starts = ends - self.doc_length
        total = int(ends[-1]) if len(ends) else 0
        cut = total - int(round(total * val_fraction))
        lo, hi = (0, cut) if split == "train" else (cut, total)
        new_start = np.maximum(starts, lo)
        new_end = np.minimum(ends, hi)
        keep = new_end > new_start
        self.doc_start = (self.doc_start + (new_start - starts))[keep]
        self.doc_length = (new_end - new_start)[keep]
        self.doc_shard = self.doc_shard[keep]

    @property
    def num_documents(self) -> int:
        return len(self.doc_length)

    @property
    def num_tokens(self) -> int:
        return int(self.doc_length.sum())

    def document(self, i: int) -> np.ndarray:
        s = self.doc_start[i]
        return self.tokens[self.doc_shard[i]][s:s + self.doc_length[i]]
