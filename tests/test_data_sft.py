"""The SFT loader (mylm_jax/data/sft.py): record shapes, loss masks, truncation, packing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mylm_jax.data.errors import DataError, SkipLog
from mylm_jax.data.pretrain import LoaderConfig
from mylm_jax.data.sft import SFTExamples, sft_loader, to_messages
from mylm_jax.tokenizer import train_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

RECORDS = [
    {"instruction": "Add", "input": "2 and 3", "output": "5", "system": "Be brief."},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]},
    {"conversations": [{"from": "human", "value": "Name?"}, {"from": "gpt", "value": "Bob"},
                       {"from": "human", "value": "Age?"}, {"from": "gpt", "value": "Nine"}]},
    {"instruction": "Talk", "output": "ok", "history": [["a", "b"]]},
]


@pytest.fixture(scope="module")
def tokenizer():
    text = "Add 2 and 3 Hello there Name Bob Age Nine Talk ok Be brief. " * 20
    return train_tokenizer([text], vocab_size=300, progress=False)


def test_record_shapes():
    log = SkipLog()
    assert to_messages(RECORDS[0], "x", log) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add\n\n2 and 3"},
        {"role": "assistant", "content": "5"}]
    assert [m["role"] for m in to_messages(RECORDS[2], "x", log)] == ["user", "assistant"] * 2
    assert [m["content"] for m in to_messages(RECORDS[3], "x", log)] == ["a", "b", "Talk", "ok"]
    bad = [{"messages": []}, {"messages": [{"role": "robot", "content": "x"}]},
           {"instruction": 3, "output": "x"}, {"prompt": "x"}, ["not", "an", "object"]]
    assert all(to_messages(r, f"f:{i}", log) is None for i, r in enumerate(bad))
    assert log.total == 5 and log.reasons["unknown role"] == 1 and log.reasons["missing field"] == 1
    assert log.examples[1] == "f:1: unknown role: message 0 has role 'robot' (expected one of system, " \
                              "user, human, assistant, gpt)"


def _write(tmp_path, records, extra_lines=()):
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join([json.dumps(r) for r in records] + list(extra_lines)) + "\n")
    return [str(path)]


def test_loss_mask_covers_assistant_answers_and_end_of_turn(tmp_path, tokenizer):
    ex = SFTExamples.load(_write(tmp_path, RECORDS), tokenizer, seq_len=64)
    assert len(ex) == 4 and ex.report()["records"] == 4
    for i, answers in enumerate([["5"], ["Hello there"], ["Bob", "Nine"], ["b", "ok"]]):
        trained = ex.targets[i][ex.loss_mask[i] > 0].tolist()
        end = tokenizer.end_of_turn_id
        # Split the trained targets at each end-of-turn token: one answer each, in order.
        runs, current = [], []
        for t in trained:
            if t == end:
                runs.append(tokenizer.decode(current))
                current = []
            else:
                current.append(t)
        assert runs == answers and not current
        np.testing.assert_array_equal(ex.inputs[i][1:], ex.targets[i][:-1])  # shifted before packing


def test_truncation_drops_examples_with_nothing_to_learn(tmp_path, tokenizer):
    long_prompt = {"messages": [{"role": "user", "content": "Name " * 40}, {"role": "assistant", "content": "Bob"}]}
    records = [RECORDS[1], long_prompt]
    ex = SFTExamples.load(_write(tmp_path, records, ['{"broken']), tokenizer, seq_len=16)
    report = ex.report()
    assert report["kept"] == 1 and report["dropped_empty_mask"] == 1 and report["truncated"] == 1
    assert report["records"] == 3 == report["kept"] + report["dropped_empty_mask"] + report["skipped"]["skipped"]


@pytest.mark.parametrize("packing", ["pack", "pad"])
def test_rows_hold_whole_examples(tmp_path, tokenizer, packing):
    ex = SFTExamples.load(_write(tmp_path, RECORDS * 4), tokenizer, seq_len=48)
    loader = sft_loader(ex, LoaderConfig(48, 2, seed=1), packing)
    batch = next(loader)
    for r in range(2):
        seg = batch["segment_ids"][r]
        n_segments = len(set(seg[seg > 0].tolist()))
        assert n_segments == 1 if packing == "pad" else n_segments >= 1
        assert (batch["loss_mask"][r][seg == 0] == 0).all()
        for s in set(seg[seg > 0].tolist()):  # every segment is one whole example
            inputs = batch["inputs"][r][seg == s]
            assert any(len(x) == len(inputs) and (x == inputs).all() for x in ex.inputs)
    state = loader.get_state()
    after = [next(loader) for _ in range(3)]
    again = sft_loader(ex, LoaderConfig(48, 2, seed=1), packing)
    again.set_state(state)
    for a in after:
        np.testing.assert_array_equal(a["targets"], next(again)["targets"])


def test_no_examples_is_a_clear_error(tmp_path, tokenizer):
    ex = SFTExamples.load(_write(tmp_path, [{"prompt": "x"}]), tokenizer, seq_len=16)
    with pytest.raises(DataError, match="no SFT examples left"):
        sft_loader(ex, LoaderConfig(16, 1))


@pytest.mark.skipif(not (SHARED / "sft").is_dir(), reason="../shared/data is absent")
def test_alpaca_zh_demo(tokenizer):
    ex = SFTExamples.load([str(SHARED / "sft" / "alpaca_zh_demo.json")], tokenizer, seq_len=512)
    report = ex.report()
    assert report["records"] == 1000 == report["kept"] + report["dropped_empty_mask"] + report["skipped"]["skipped"]
    assert report["kept"] > 900 and report["loss_tokens"] > 0
