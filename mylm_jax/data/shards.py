"""Token shards on disk: write them atomically, read them back as memory maps.

A prepared dataset is a directory:

    metadata.json                 written last: its presence means the set is complete
    train_00000.tokens.npy        token ids of many documents back to back (uint16 if the
                                  vocab fits in 65,536 ids, else uint32)
    train_00000.docs.npy          int64 offsets [n_docs + 1]: document i is tokens[o[i]:o[i+1]]
    val_00000.tokens.npy ...

Every file is written under a temporary name and renamed into place (os.replace is
atomic), so an interrupted run never leaves a half shard under a final name.

Splits are "document" (each document is in train or in val) or "tail" (nanoGPT style:
one token stream, the last `val_fraction` of its tokens is val, cutting a document if
it must). A tail split is a view: the shards hold one stream and `TokenShards` clips
it to [0, cut) or [cut, end).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mylm_jax.data.errors import DataError

FORMAT, VERSION = "mylm-token-shards", 1
METADATA = "metadata.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def atomic_write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
        atomic_save(self.out_dir / f"{name}.tokens.npy", np.concatenate(self._docs))
        atomic_save(self.out_dir / f"{name}.docs.npy", offsets)
        self.shards.append({"name": name, "num_tokens": int(offsets[-1]), "num_documents": len(self._docs)})
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
