"""Token shards and the pretraining loaders (mylm_jax/data/shards.py, pretrain.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mylm_jax.data.errors import DataError
from mylm_jax.data.pretrain import LoaderConfig, pretrain_loader
from mylm_jax.data.shards import ShardWriter, TokenShards, write_metadata

T, B = 32, 4


def _docs(n=120, seed=0):
    """Document k holds tokens in [1000 k + 1, 1000 k + 999]: a token says which document it is from."""
    rng = np.random.default_rng(seed)
    return [1000 * k + rng.integers(1, 1000, rng.integers(2, 70)) for k in range(n)]


@pytest.fixture
def dataset(tmp_path):
    docs = _docs()
    writer = ShardWriter(tmp_path, "train", np.dtype(np.uint32), shard_tokens=500)  # several shards
    for d in docs:
        writer.add(d)
    write_metadata(tmp_path, {"train": writer})
    return str(tmp_path), docs


def _batches(loader, n):
    return [next(loader) for _ in range(n)]


def _epoch_rows(data_dir, cfg):
    loader = pretrain_loader(data_dir, "train", cfg)
    rows_per_epoch = len(loader.dataset(0)) * cfg.rows_per_process
    batches = _batches(loader, len(loader.dataset(0)))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}, rows_per_epoch


def test_shards_round_trip(dataset):
    data_dir, docs = dataset
    shards = TokenShards.open(data_dir, "train")
    assert len(shards.tokens) > 1 and shards.num_documents == len(docs)
    for k in (0, 57, len(docs) - 1):
        np.testing.assert_array_equal(shards.document(k), docs[k])


def test_packed_rows_hold_every_pair_once_and_never_cross_documents(dataset):
    data_dir, docs = dataset
    rows, _ = _epoch_rows(data_dir, LoaderConfig(T, B, "packed", seed=3))
    assert rows["inputs"].shape[1] == T and rows["inputs"].dtype == np.int32
    valid = rows["loss_mask"] > 0
    np.testing.assert_array_equal(valid, rows["segment_ids"] > 0)
    # No pair crosses documents: input and target come from the same document.
    assert (rows["inputs"][valid] // 1000 == rows["targets"][valid] // 1000).all()
    # Every (input, target) pair of every document appears, once (the epoch may drop < one batch).
    got = sorted(zip(rows["inputs"][valid].tolist(), rows["targets"][valid].tolist()))
    want = sorted((int(a), int(b)) for d in docs for a, b in zip(d[:-1], d[1:]))
    assert set(got) <= set(want) and len(got) >= len(want) - B * T
    # Positions restart at 0 in every segment; segments count 1, 2, ... within a row.
    for r in range(5):
        seg, pos = rows["segment_ids"][r], rows["positions"][r]
        for s in set(seg[seg > 0].tolist()):
            np.testing.assert_array_equal(pos[seg == s], np.arange((seg == s).sum()))


def test_bos_and_document_alignment(dataset):
    data_dir, docs = dataset
    bos = 7
    rows, _ = _epoch_rows(data_dir, LoaderConfig(T, B, "packed", seed=1, bos_id=bos, align_to_documents=True))
    assert (rows["inputs"][:, 0] == bos).all() and (rows["positions"][:, 0] == 0).all()
    starts = rows["inputs"] == bos  # every document starts with bos and predicts its first token
    firsts = {int(d[0]) for d in docs}
    assert set(rows["targets"][starts].tolist()) <= firsts


def test_windows_are_consecutive_tokens(dataset):
    data_dir, docs = dataset
    stream = np.concatenate(docs)
    batch = next(pretrain_loader(data_dir, "train", LoaderConfig(T, B, "windows", seed=0)))
    for r in range(B):
        np.testing.assert_array_equal(batch["inputs"][r, 1:], batch["targets"][r, :-1])
        start = np.flatnonzero(stream == batch["inputs"][r, 0])
        assert any((stream[s:s + T] == batch["inputs"][r]).all() for s in start)
    assert (batch["segment_ids"] == 1).all() and (batch["loss_mask"] == 1).all()


@pytest.mark.parametrize("mode, workers", [("packed", 0), ("windows", 0), ("packed", 1)])
def test_resume_gives_exactly_the_next_batches(dataset, mode, workers):
    data_dir, _ = dataset
    cfg = LoaderConfig(T, B, mode, seed=5, bos_id=3, workers=workers)
    loader = pretrain_loader(data_dir, "train", cfg)
    per_epoch = len(loader.dataset(0))
    _batches(loader, per_epoch - 2)
    state = loader.get_state()
    expected = _batches(loader, 5)  # crosses into epoch 1
    assert loader.epoch == 1
    resumed = pretrain_loader(data_dir, "train", cfg)
    resumed.set_state(state)
    for a, b in zip(expected, _batches(resumed, 5)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_epochs_reshuffle_and_seeds_repeat(dataset):
    data_dir, _ = dataset
    cfg = LoaderConfig(T, B, "packed", seed=5)
    a, b = pretrain_loader(data_dir, "train", cfg), pretrain_loader(data_dir, "train", cfg)
    first = _batches(a, 3)
    np.testing.assert_array_equal(first[0]["inputs"], next(b)["inputs"])
    a.set_state({"epoch": 1, "iterator": {"next_index": 0}})
    assert not np.array_equal(next(a)["inputs"], first[0]["inputs"])


def test_processes_take_disjoint_rows(dataset):
    data_dir, _ = dataset
    cfg = LoaderConfig(T, 2, "packed", seed=2)
    both, _ = _epoch_rows(data_dir, dataclasses.replace(cfg, rows_per_process=4))
    parts = [_epoch_rows(data_dir, dataclasses.replace(cfg, process_index=p, process_count=2))[0] for p in (0, 1)]
    rows = lambda x: {tuple(r) for r in x["inputs"].tolist()}  # noqa: E731
    assert not rows(parts[0]) & rows(parts[1])
    assert rows(parts[0]) | rows(parts[1]) <= rows(both) | rows(parts[0]) | rows(parts[1])
    assert len(rows(parts[0]) | rows(parts[1])) >= len(rows(both)) - 4


def test_tail_split_cuts_the_stream(tmp_path):
    docs = _docs(40)
    writer = ShardWriter(tmp_path, "train", np.dtype(np.uint16))
    for d in docs:
        writer.add(d)
    write_metadata(tmp_path, {"train": writer}, split_mode="tail", val_fraction=0.1)
    train, val = TokenShards.open(tmp_path, "train"), TokenShards.open(tmp_path, "val")
    total = sum(len(d) for d in docs)
    assert train.num_tokens + val.num_tokens == total and val.num_tokens == round(0.1 * total)
    joined = np.concatenate([train.document(i) for i in range(train.num_documents)]
                            + [val.document(i) for i in range(val.num_documents)])
    np.testing.assert_array_equal(joined, np.concatenate(docs))


def test_loader_errors_are_one_line(tmp_path, dataset):
    with pytest.raises(DataError, match="no metadata.json"):
        pretrain_loader(str(tmp_path / "nothing"), "train", LoaderConfig(T, B))
    data_dir, _ = dataset
    with pytest.raises(DataError, match="fewer than one batch"):
        next(pretrain_loader(data_dir, "train", LoaderConfig(T, 10_000)))
    with pytest.raises(DataError, match="no split 'test'"):
        pretrain_loader(data_dir, "test", LoaderConfig(T, B))
