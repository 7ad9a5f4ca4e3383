"""Pretraining rows to the token (mylm_jax/data/pretrain.py, shards.py): which token is each
input and target, where a segment starts, each position, what is padding, how a tail
split cuts the stream and how rows are dealt to processes.

Four documents, d0 = 1 2 3, d1 = 4 5, d2 = 6 7 8 9, d3 = 10 (one token: no pair without a
BOS). Seed 1 keeps them in that order in epoch 0, so every row below is worked out by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from mylm_jax.data.errors import DataError
from mylm_jax.data.pretrain import (
    LoaderConfig,
    PackedRows,
    WindowRows,
    empty_row,
    pieces,
    pretrain_loader,
)
from mylm_jax.data.shards import ShardWriter, TokenShards, write_metadata

DOCS = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
BOS = 99


def _write(path, shard_tokens, split_mode="document", val_fraction=0.0):
    writer = ShardWriter(path, "train", np.dtype(np.uint16), shard_tokens=shard_tokens)
    for d in DOCS:
        writer.add(np.array(d))
    write_metadata(path, {"train": writer}, split_mode=split_mode, val_fraction=val_fraction)
    return writer


# Several shards (the gather goes shard by shard) and one shard must give the same rows.
@pytest.fixture(params=[(4, 3), (5, 2), (1000, 1)], ids=["three_shards", "two_shards", "one_shard"])
def shards(request, tmp_path):
    shard_tokens, n_shards = request.param
    _write(tmp_path, shard_tokens)
    shards = TokenShards.open(tmp_path, "train")
    assert len(shards.tokens) == n_shards
    return shards


def _rows(source):
    return [source[r] for r in range(len(source))]


def _assert_rows(rows, inputs, targets, segment_ids, positions):
    for key, want in (("inputs", inputs), ("targets", targets), ("segment_ids", segment_ids),
                      ("positions", positions)):
        assert [r[key].tolist() for r in rows] == want, key
    # Exactly the pairs are trained; the padding is zeros everywhere.
    assert [r["loss_mask"].tolist() for r in rows] == [[float(s > 0) for s in seg] for seg in segment_ids]
    assert all(r["inputs"].dtype == np.int32 and r["loss_mask"].dtype == np.float32 for r in rows)


# Seed 6 orders d0, d3, d1, d2: d3, which has no pair, takes no segment number.
@pytest.mark.parametrize("seed", [1, 6])
def test_packed_rows_without_bos(shards, seed):
    # Pairs: d0 (1,2) (2,3), d1 (4,5), d2 (6,7) (7,8) (8,9), d3 none; rows of T = 4 pairs.
    rows = _rows(PackedRows(shards, LoaderConfig(4, 1, seed=seed), epoch=0))
    _assert_rows(rows,
                 inputs=[[1, 2, 4, 6], [7, 8, 0, 0]],
                 targets=[[2, 3, 5, 7], [8, 9, 0, 0]],
                 segment_ids=[[1, 1, 2, 3], [1, 1, 0, 0]],
                 positions=[[0, 1, 0, 0], [0, 1, 0, 0]])


def test_packed_rows_with_bos_predict_each_documents_first_token(shards):
    assert len(PackedRows(shards, LoaderConfig(3, 1, seed=1, bos_id=BOS), epoch=0)) == 4  # 10 pairs, rows of 3
    rows = _rows(PackedRows(shards, LoaderConfig(4, 1, seed=1, bos_id=BOS), epoch=0))
    _assert_rows(rows,
                 inputs=[[BOS, 1, 2, BOS], [4, BOS, 6, 7], [8, BOS, 0, 0]],
                 targets=[[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]],
                 segment_ids=[[1, 1, 1, 2], [1, 2, 2, 2], [1, 2, 0, 0]],
                 positions=[[0, 1, 2, 0], [0, 0, 1, 2], [0, 0, 0, 0]])


def test_aligned_rows_start_at_documents_and_drop_the_cut_remainder(shards):
    # d1 is cut at row 0's end; its pair (4, 5) is not trained this epoch.
    rows = _rows(PackedRows(shards, LoaderConfig(4, 1, seed=1, bos_id=BOS, align_to_documents=True), epoch=0))
    _assert_rows(rows,
                 inputs=[[BOS, 1, 2, BOS], [BOS, 6, 7, 8], [BOS, 0, 0, 0]],
                 targets=[[1, 2, 3, 4], [6, 7, 8, 9], [10, 0, 0, 0]],
                 segment_ids=[[1, 1, 1, 2], [1, 1, 1, 1], [1, 0, 0, 0]],
                 positions=[[0, 1, 2, 0], [0, 1, 2, 3], [0, 0, 0, 0]])


@pytest.mark.parametrize("seed, order, inputs, targets, segment_ids, positions", [
    (3, [3, 2, 1, 0], [[6, 7, 8], [4, 1, 2]], [[7, 8, 9], [5, 2, 3]], [[1, 1, 1], [1, 2, 2]], [[0, 1, 2], [0, 0, 1]]),
    (0, [2, 0, 1, 3], [[6, 7, 8], [1, 2, 4]], [[7, 8, 9], [2, 3, 5]], [[1, 1, 1], [1, 1, 2]], [[0, 1, 2], [0, 1, 0]]),
])
def test_aligned_rows_skip_a_document_without_pairs(shards, seed, order, inputs, targets, segment_ids, positions):
    # d3 has no pair without a BOS: first in seed 3's order, last in seed 0's.
    packed = PackedRows(shards, LoaderConfig(3, 1, seed=seed, align_to_documents=True), epoch=0)
    assert packed.order.tolist() == order
    _assert_rows(_rows(packed), inputs, targets, segment_ids, positions)


def test_windows_are_t_plus_one_consecutive_stream_tokens(shards):
    stream = np.concatenate(DOCS)
    windows = WindowRows(shards, LoaderConfig(3, 1, "windows", seed=0), epoch=0)
    assert len(windows) == len(stream) // 4  # rows of T + 1 tokens that fit in the stream
    assert len(WindowRows(shards, LoaderConfig(2, 1, "windows"), epoch=0)) == len(stream) // 3
    starts = set()
    for epoch in range(12):
        for r in range(len(windows)):
            row = WindowRows(shards, LoaderConfig(3, 1, "windows", seed=0), epoch)[r]
            s = int(np.flatnonzero(stream == row["inputs"][0])[0])
            starts.add(s)
            assert row["inputs"].tolist() == stream[s:s + 3].tolist()
            assert row["targets"].tolist() == stream[s + 1:s + 4].tolist()
            assert row["segment_ids"].tolist() == [1, 1, 1] and row["positions"].tolist() == [0, 1, 2]
            assert row["loss_mask"].tolist() == [1.0, 1.0, 1.0]
    # Starts are drawn from [0, 10 - 3): every window of 3 + 1 tokens, the last one included.
    assert starts == set(range(7))


def test_pieces_cut_a_stream_range_at_item_boundaries():
    ends = np.array([3, 5, 9, 10])
    assert pieces(ends, 2, 7) == [(0, 2, 3), (1, 0, 2), (2, 0, 2)]
    assert pieces(ends, 3, 5) == [(1, 0, 2)]
    assert pieces(ends, 8, 12) == [(2, 3, 4), (3, 0, 1)]
    assert pieces(ends, 10, 14) == []


def test_an_empty_row_is_padding():
    row = empty_row(3)
    assert {k: (v.tolist(), v.dtype) for k, v in row.items()} == {
        "inputs": ([0, 0, 0], np.int32), "targets": ([0, 0, 0], np.int32), "loss_mask": ([0.0] * 3, np.float32),
        "segment_ids": ([0, 0, 0], np.int32), "positions": ([0, 0, 0], np.int32)}


def test_processes_are_dealt_every_pth_row(tmp_path):
    _write(tmp_path, 1000)
    cfg = LoaderConfig(4, 1, seed=1, bos_id=BOS, process_count=2)
    # Three rows, two processes: each gets one (row 2 would leave process 1 short), in order.
    first = [next(pretrain_loader(str(tmp_path), "train", dataclasses.replace(cfg, process_index=p)))["inputs"].tolist()
             for p in (0, 1)]
    assert first == [[[BOS, 1, 2, BOS]], [[4, BOS, 6, 7]]]
    loader = pretrain_loader(str(tmp_path), "train", cfg)
    assert loader.rows(0) == 1 and len(loader.dataset(0)) == 1
    with pytest.raises(DataError, match=r"^process_index 2 not in \[0, 2\)$"):
        pretrain_loader(str(tmp_path), "train", LoaderConfig(4, 1, process_index=2, process_count=2))


def test_a_batch_stacks_consecutive_rows(tmp_path):
    _write(tmp_path, 1000)
    loader = pretrain_loader(str(tmp_path), "train", LoaderConfig(4, 2, seed=1, bos_id=BOS))
    assert len(loader.dataset(0)) == 1  # three rows: the third would be a short batch, and is dropped
    batch = next(loader)
    assert batch["inputs"].tolist() == [[BOS, 1, 2, BOS], [4, BOS, 6, 7]]
    assert batch["positions"].tolist() == [[0, 1, 2, 0], [0, 0, 1, 2]]


def test_the_loader_refuses_too_short_windows_and_unknown_modes(tmp_path):
    _write(tmp_path, 1000)
    with pytest.raises(DataError, match=r"10 tokens, too few for windows of 11$"):
        pretrain_loader(str(tmp_path), "train", LoaderConfig(10, 1, "windows"))
    pretrain_loader(str(tmp_path), "train", LoaderConfig(8, 1, "windows"))  # 10 tokens > 8 + 1
    with pytest.raises(DataError, match=r"^loader mode must be 'packed' or 'windows', got 'ragged'$"):
        pretrain_loader(str(tmp_path), "train", LoaderConfig(4, 1, "ragged"))


def test_shards_hold_each_document_whole_and_count_them(tmp_path):
    writer = _write(tmp_path, 4)
    assert [(s["name"], s["num_tokens"], s["num_documents"]) for s in writer.shards] == [
        ("train_00000", 5, 2), ("train_00001", 4, 1), ("train_00002", 1, 1)]
    assert (writer.num_tokens, writer.num_documents) == (10, 4)
    # The hash covers the tokens as stored (the writer's dtype) and the offsets.
    tokens, offsets = np.array([1, 2, 3, 4, 5], np.uint16), np.array([0, 3, 5], np.int64)
    assert writer.shards[0]["sha256"] == hashlib.sha256(tokens.tobytes() + offsets.tobytes()).hexdigest()
    shards = TokenShards.open(tmp_path)  # the train split by default
    assert shards.split == "train" and shards.data_dir == tmp_path
    assert shards.metadata == json.loads((tmp_path / "metadata.json").read_text())
    assert all(isinstance(t, np.memmap) and t.dtype == np.uint16 for t in shards.tokens)
    assert [shards.document(i).tolist() for i in range(shards.num_documents)] == DOCS
    assert shards.doc_shard.tolist() == [0, 0, 1, 2] and shards.doc_start.tolist() == [0, 3, 0, 0]
    assert shards.doc_length.tolist() == [3, 2, 4, 1] and shards.num_tokens == 10


@pytest.mark.parametrize("shard_tokens", [4, 1000])
@pytest.mark.parametrize("val_fraction, train_docs, val_docs", [
    (0.3, [[1, 2, 3], [4, 5], [6, 7]], [[8, 9], [10]]),      # the last 3 of 10 tokens: d2 is cut
    (0.5, [[1, 2, 3], [4, 5]], [[6, 7, 8, 9], [10]]),        # the cut falls between d1 and d2
])
def test_a_tail_split_cuts_the_stream(tmp_path, shard_tokens, val_fraction, train_docs, val_docs):
    _write(tmp_path, shard_tokens, split_mode="tail", val_fraction=val_fraction)
    train, val = TokenShards.open(tmp_path, "train"), TokenShards.open(tmp_path, "val")
    assert [train.document(i).tolist() for i in range(train.num_documents)] == train_docs
    assert [val.document(i).tolist() for i in range(val.num_documents)] == val_docs


def test_a_shard_is_flushed_when_its_buffer_reaches_shard_tokens(tmp_path):
    writer = ShardWriter(tmp_path, "train", np.dtype(np.uint16), shard_tokens=5)
    for n in (3, 2, 2, 2, 1):  # 3 + 2 fills a shard; the next one starts empty
        writer.add(np.ones(n, np.uint16))
    assert [(s["num_tokens"], s["num_documents"]) for s in writer.summary()["shards"]] == [(5, 2), (5, 3)]


def test_the_val_split_and_an_empty_split(tmp_path):
    train, val, empty = (ShardWriter(tmp_path, split, np.dtype(np.uint16)) for split in ("train", "val", "val"))
    for d in DOCS[:3]:
        train.add(np.array(d))
    val.add(np.array(DOCS[3]))
    write_metadata(tmp_path, {"train": train, "val": val})
    val_shards = TokenShards.open(tmp_path, "val")
    assert val_shards.split == "val" and [val_shards.document(0).tolist()] == [DOCS[3]]
    # A split that holds no document: no rows, not a phantom one.
    write_metadata(tmp_path, {"train": train, "val": empty})
    nothing = TokenShards.open(tmp_path, "val")
    assert nothing.num_documents == 0 and nothing.num_tokens == 0 and nothing.tokens == []
    assert (nothing.doc_shard.dtype, nothing.doc_start.dtype, nothing.doc_length.dtype) == (np.int32, np.int64, np.int64)
    assert len(PackedRows(nothing, LoaderConfig(4, 1), epoch=0)) == 0
    write_metadata(tmp_path, {"train": train})
    with pytest.raises(DataError, match=r"no split 'val' \(has train\)$"):
        TokenShards.open(tmp_path, "val")
