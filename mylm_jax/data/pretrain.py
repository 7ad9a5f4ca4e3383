"""Pretraining batches from token shards, on grain, resumable to the exact next batch.

Every batch is a dict of numpy arrays [B, T]:
    inputs, targets (int32), loss_mask (float32), segment_ids, positions (int32)

Two ways to cut rows of T tokens:

    windows   nanoGPT: T + 1 consecutive tokens of the corpus from a random start (one
              random start per row, from a generator seeded by (seed, epoch, row)); rows
              cross document boundaries, one segment, positions 0..T-1.
    packed    documents in a shuffled order (seeded per epoch), each turned into its
              (input, target) pairs *before* packing: a document d of n tokens gives
              inputs d[0:n-1] and targets d[1:n] (with bos_id set, d = [bos] + d, so the
              first real token is predicted too). The pairs of all documents form one
              stream; row r is the next T pairs. A row holds pieces of several documents,
              each its own segment (1, 2, ...) with positions from 0, so attention never
              crosses documents and no document predicts the next one's first token.
              The last row of an epoch is padded (segment 0, loss_mask 0).
              align_to_documents: every row starts at a document start (modded-nanogpt's
              BOS alignment); the document that does not fit is cut at the row's end and
              its remainder dropped for this epoch.

Sharding: with P JAX processes, process p takes rows p, p + P, ...; `rows_per_process` is per
process. Each epoch is a grain MapDataset (random access, so resuming is exact);
`get_state()` is {epoch, grain iterator state} and `set_state` restores the iterator
to exactly the batch that would have come next. `workers > 0` prefetches in processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import grain
import numpy as np

from mylm_jax.data.errors import DataError
from mylm_jax.data.shards import TokenShards


@dataclass(frozen=True)
class LoaderConfig:
    seq_len: int
    rows_per_process: int  # this process's rows of a batch: train.batch_size / processes
    mode: Literal["packed", "windows"] = "packed"
    seed: int = 0
    bos_id: int | None = None
    align_to_documents: bool = False
    process_index: int = 0
    process_count: int = 1
    workers: int = 0  # grain multiprocess prefetch workers; 0 = in this process


def pieces(ends: np.ndarray, start: int, stop: int) -> list[tuple[int, int, int]]:
    """The parts of stream [start, stop) as (item, from, to) offsets inside each item, where
    item i occupies [ends[i-1], ends[i]) of the stream (ends = cumulative lengths)."""
    out = []
    i = int(np.searchsorted(ends, start, side="right"))
    while start < stop and i < len(ends):
        item_start = ends[i - 1] if i else 0
        end = min(stop, int(ends[i]))
        if end > start:
            out.append((i, start - item_start, end - item_start))
        start, i = end, i + 1
    return out


def empty_row(T: int) -> dict[str, np.ndarray]:
    return {"inputs": np.zeros(T, np.int32), "targets": np.zeros(T, np.int32),
            "loss_mask": np.zeros(T, np.float32), "segment_ids": np.zeros(T, np.int32),
            "positions": np.zeros(T, np.int32)}


class WindowRows:
    """Rows of one epoch in `windows` mode (a grain data source)."""

    def __init__(self, shards: TokenShards, cfg: LoaderConfig, epoch: int):
        self.shards, self.cfg, self.epoch = shards, cfg, epoch
        self.ends = np.cumsum(shards.doc_length)
        self.total = int(self.ends[-1]) if len(self.ends) else 0
        self.length = max(0, self.total // (cfg.seq_len + 1))

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"WindowRows({self.shards.data_dir}, {self.shards.split}, T={self.cfg.seq_len}, epoch={self.epoch})"

    def __getitem__(self, r: int) -> dict[str, np.ndarray]:
        T = self.cfg.seq_len
        start = int(np.random.default_rng([self.cfg.seed, self.epoch, r]).integers(0, self.total - T))
        window = np.concatenate([self.shards.document(i)[a:b] for i, a, b in pieces(self.ends, start, start + T + 1)])
        row = empty_row(T)
        row["inputs"][:] = window[:-1]
        row["targets"][:] = window[1:]
        row["loss_mask"][:] = 1.0
        row["segment_ids"][:] = 1
        row["positions"][:] = np.arange(T)
        return row


class PackedRows:
    """Rows of one epoch in `packed` mode (a grain data source)."""

    def __init__(self, shards: TokenShards, cfg: LoaderConfig, epoch: int):
        self.shards, self.cfg, self.epoch = shards, cfg, epoch
        T, extra = cfg.seq_len, int(cfg.bos_id is not None)
        self.order = np.random.default_rng([cfg.seed, epoch]).permutation(shards.num_documents)
        pairs = np.maximum(shards.doc_length[self.order] + extra - 1, 0)  # (input, target) pairs per doc
        self.ends = np.cumsum(pairs)
        total = int(self.ends[-1]) if len(self.ends) else 0
        if not cfg.align_to_documents:
            self.starts = np.arange(0, total, T)
        else:  # each row starts where a document starts; the document cut at the row's end ends there
            starts, i = [], 0
            doc_starts = np.concatenate([[0], self.ends[:-1]])
            while i < len(pairs):
                if pairs[i] == 0:
                    i += 1
                    continue
                starts.append(int(doc_starts[i]))
                i = int(np.searchsorted(self.ends, doc_starts[i] + T, side="left")) + 1
            self.starts = np.asarray(starts, np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __repr__(self) -> str:
        c = self.cfg
        return (f"PackedRows({self.shards.data_dir}, {self.shards.split}, T={c.seq_len}, seed={c.seed}, "
                f"bos={c.bos_id}, aligned={c.align_to_documents}, epoch={self.epoch})")

    def __getitem__(self, r: int) -> dict[str, np.ndarray]:
        """Gather the row's pieces with index arithmetic (no Python loop over tokens).

        Piece j covers pairs [a_j, b_j) of document i_j. With BOS the document is
        [bos] + d, so pair p reads input d[p - 1] (bos when p = 0) and target d[p];
        without, input d[p] and target d[p + 1].
        """
        T, bos = self.cfg.seq_len, self.cfg.bos_id
        row = empty_row(T)
        start = int(self.starts[r])
        parts = pieces(self.ends, start, start + T)
        if not parts:
            return row
        items, a, b = (np.array(x) for x in zip(*parts))
        docs = self.order[items]
        n = b - a
        filled = int(n.sum())
        offset_in_piece = np.arange(filled) - np.repeat(np.cumsum(n) - n, n)  # 0.. within each piece
        pair = np.repeat(a, n) + offset_in_piece  # pair index inside its document
        shard = np.repeat(self.shards.doc_shard[docs], n)
        base = np.repeat(self.shards.doc_start[docs], n)
        shift = 0 if bos is None else 1
        inputs_at, targets_at = base + pair - shift, base + pair + 1 - shift
        if len(self.shards.tokens) == 1:
            tokens = self.shards.tokens[0]
            row["inputs"][:filled] = tokens[np.maximum(inputs_at, 0)]
            row["targets"][:filled] = tokens[targets_at]
        else:  # pieces from several shards: gather shard by shard
            for s in np.unique(shard):
                m = shard == s
                row["inputs"][:filled][m] = self.shards.tokens[s][np.maximum(inputs_at[m], 0)]
                row["targets"][:filled][m] = self.shards.tokens[s][targets_at[m]]
        if bos is not None:
            row["inputs"][:filled][pair == 0] = bos
        row["loss_mask"][:filled] = 1.0
        row["segment_ids"][:filled] = np.repeat(np.arange(1, len(n) + 1), n)
        row["positions"][:filled] = offset_in_piece
        return row


# How far grain's threads read ahead. Its defaults (16 threads, 500 batches, chosen for
# remote storage) made every fresh iterator compute hundreds of batches in Python threads
# that fight the step's own thread and XLA for the GIL and the cores: the evaluation's
# loader, new at every evaluation, read its whole split ahead (an evaluation of 20 batches
# took 0.49-0.61 s instead of 0.31-0.39). Shards are memory-mapped: two threads a few calls
# of steps ahead keep the device fed. Which batches come out, in which order, is unchanged.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=32)


def _stack(rows):
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class EpochLoader:
    """Batches from one rows-per-epoch source after another, with exact get_state / set_state."""

    def __init__(self, make_rows, cfg: LoaderConfig):
        if not 0 <= cfg.process_index < cfg.process_count:
            raise DataError(f"process_index {cfg.process_index} not in [0, {cfg.process_count})")
        self.make_rows, self.cfg = make_rows, cfg
        self.epoch, self._iterator = 0, None

    def rows(self, epoch: int) -> int:
        """Rows this process gets in an epoch (before batching)."""
        return len(self.make_rows(epoch)) // self.cfg.process_count

    def dataset(self, epoch: int) -> grain.MapDataset:
        c = self.cfg
        rows = grain.MapDataset.source(self.make_rows(epoch))
        usable = len(rows) // c.process_count * c.process_count  # every process gets as many rows
        rows = rows[c.process_index:usable:c.process_count]
        if len(rows) < c.rows_per_process:
            raise DataError(f"epoch {epoch} has {len(rows)} rows for this process, fewer than one batch "
                            f"of {c.rows_per_process}: use a smaller batch or seq_len, or more data")
        return rows.batch(c.rows_per_process, drop_remainder=True, batch_fn=_stack)

    def _start(self, state=None):
        ds = self.dataset(self.epoch).to_iter_dataset(READ_OPTIONS)
        if self.cfg.workers > 0:
            from absl import flags
            flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.cfg.workers))
        self._iterator = iter(ds)
        if state is not None:
            self._iterator.set_state(state)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            self._start()
        try:
            return next(self._iterator)
        except StopIteration:
            self.epoch += 1
            self._start()
            return next(self._iterator)

    def get_state(self) -> dict:
        if self._iterator is None:
            self._start()
        return {"epoch": self.epoch, "iterator": self._iterator.get_state()}

    def set_state(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._start(state["iterator"])


def pretrain_loader(data_dir: str, split: str, cfg: LoaderConfig) -> EpochLoader:
    shards = TokenShards.open(data_dir, split)
    if cfg.mode == "windows":
        if shards.num_tokens <= cfg.seq_len + 1:
            raise DataError(f"{data_dir} ({split}): {shards.num_tokens} tokens, too few for windows of "
                            f"{cfg.seq_len + 1}")
        return EpochLoader(lambda epoch: WindowRows(shards, cfg, epoch), cfg)
    if cfg.mode != "packed":
        raise DataError(f"loader mode must be 'packed' or 'windows', got {cfg.mode!r}")
    return EpochLoader(lambda epoch: PackedRows(shards, cfg, epoch), cfg)
