"""SFT rows to the id (mylm_jax/data/sft.py): the shift, the truncation, the examples dropped
for having nothing to learn, the counts, and how examples are packed into rows.

A stand-in tokenizer gives each conversation a fixed rendering (ids, mask), so every
expected array below is written out by hand; the chat template itself is tested in
tests/test_sft_chat.py and tests/test_data_sft.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mylm_jax.data.errors import DataError, SkipLog
from mylm_jax.data.pretrain import LoaderConfig
from mylm_jax.data.sft import SFTExamples, SFTRows, sft_loader, to_messages

# The assistant's answer names the rendering: (ids, mask), mask 1 on what is trained.
RENDERS = {
    "long": ([1, 10, 11, 2, 12, 13, 3], [0, 0, 0, 0, 1, 1, 1]),  # 6 pairs: truncated to 4, keeps one trained
    "fits": ([1, 20, 2, 21, 3], [0, 0, 0, 1, 1]),                # 4 pairs: exactly seq_len, not truncated
    "one": ([5, 6], [0, 1]),                                     # a single pair
    "alone": ([5], [0]),                                         # no pair at all
    "late": ([1, 30, 31, 32, 2, 33], [0, 0, 0, 0, 0, 1]),        # its only trained token is cut off
    "first": ([7, 8, 9], [0, 1, 0]),                             # only the first target is trained
    "last": ([7, 9, 8], [0, 0, 1]),                              # only the last target is trained
}


class FixedRenderer:
    def render(self, messages):
        answer = messages[-1]["content"]
        if answer == "refuse":
            raise ValueError("message 1: refused by the template")
        return RENDERS[answer]


def _conversation(answer):
    return json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]})


@pytest.fixture
def sft_file(tmp_path):
    lines = [json.dumps({"prompt": "no known shape"}), _conversation("long"), _conversation("refuse"),
             _conversation("fits"), '{"broken', _conversation("one"), _conversation("alone"),
             _conversation("late"), _conversation("first"), _conversation("last"), json.dumps({"messages": []})]
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_examples_are_shifted_truncated_and_dropped_to_the_id(sft_file):
    log = SkipLog()
    ex = SFTExamples.load([sft_file], FixedRenderer(), seq_len=4, log=log)
    assert ex.log is log
    want = [  # (inputs, targets, loss_mask): ids[:n], ids[1:n+1], mask[1:n+1], n = min(pairs, 4)
        ([1, 10, 11, 2], [10, 11, 2, 12], [0, 0, 0, 1]),
        ([1, 20, 2, 21], [20, 2, 21, 3], [0, 0, 1, 1]),
        ([5], [6], [1]),
        ([7, 8], [8, 9], [1, 0]),
        ([7, 9], [9, 8], [0, 1]),
    ]
    assert len(ex) == len(want)
    for i, (inputs, targets, mask) in enumerate(want):
        assert ex.inputs[i].dtype == np.int32 and ex.targets[i].dtype == np.int32
        assert ex.loss_mask[i].dtype == np.float32
        assert ex.inputs[i].tolist() == inputs and ex.targets[i].tolist() == targets
        assert ex.loss_mask[i].tolist() == mask
    assert (ex.records, ex.unusable, ex.truncated, ex.dropped_empty_mask) == (10, 3, 2, 2)


def test_the_report_accounts_for_every_record(sft_file):
    ex = SFTExamples.load([sft_file], FixedRenderer(), seq_len=4)
    report = ex.report()
    # Every line: kept, or with nothing to learn ("alone", "late"), or skipped (two records of
    # no usable shape, one the template refused, a broken JSON line the reader never yielded).
    assert report == {
        "records": 11, "kept": 5, "dropped_empty_mask": 2, "truncated": 2,
        "loss_tokens": 1 + 2 + 1 + 1 + 1, "tokens": 4 + 4 + 1 + 2 + 2,
        "skipped": {"skipped": 4, "by_reason": {"invalid JSON": 1, "missing field": 1, "template": 1,
                                                "wrong type": 1},
                    "first": report["skipped"]["first"]},
    }
    first = report["skipped"]["first"]
    assert first[:2] == [(f"{sft_file}:1: missing field: expected 'messages', 'conversations' or 'instruction' + "
                          "'output'"), f"{sft_file}:3: message 1: refused by the template"]
    assert first[2].startswith(f"{sft_file}:5: invalid JSON")
    assert first[3:] == [f"{sft_file}:11: wrong type: messages must be a non-empty list"]


def test_a_subset_keeps_the_chosen_examples_in_order_and_the_whole_sets_report(sft_file):
    ex = SFTExamples.load([sft_file], FixedRenderer(), seq_len=4)
    part = ex.subset([3, 0])
    assert [x.tolist() for x in part.inputs] == [[7, 8], [1, 10, 11, 2]]
    assert [x.tolist() for x in part.targets] == [[8, 9], [10, 11, 2, 12]]
    assert [x.tolist() for x in part.loss_mask] == [[1, 0], [0, 0, 0, 1]]
    assert part.report()["records"] == 11 and part.report()["kept"] == 2


def test_roles_of_every_record_shape():
    log = SkipLog()
    sharegpt = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "u"},
                                  {"from": "gpt", "value": "a"}]}
    assert to_messages(sharegpt, "x", log) == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                               {"role": "assistant", "content": "a"}]
    # "messages" wins over "conversations"; role/content win over from/value.
    both = {"messages": [{"role": "user", "content": "m", "from": "gpt", "value": "v"}],
            "conversations": [{"from": "gpt", "value": "c"}]}
    assert to_messages(both, "x", log) == [{"role": "user", "content": "m"}]
    alpaca = {"instruction": "Do", "input": "", "output": "Done", "history": [["h1", "a1"], ["h2", "a2"]]}
    assert to_messages(alpaca, "x", log) == [
        {"role": "user", "content": "h1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "h2"}, {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "Do"}, {"role": "assistant", "content": "Done"}]
    assert log.total == 0


@pytest.mark.parametrize("record, reason, example", [
    (["a", "list"], "wrong type", "wrong type: record is list, expected an object"),
    ({"messages": "hi"}, "wrong type", "wrong type: messages must be a non-empty list"),
    ({"messages": ["hi"]}, "wrong type", "wrong type: message 0 is str, expected an object"),
    ({"messages": [{"role": "user", "content": 5}]}, "wrong type",
     "wrong type: message 0 content is int, expected a string"),
    ({"instruction": "a", "output": "b", "system": 1}, "wrong type",
     "wrong type: field 'system' is int, expected a string"),
    ({"instruction": "a", "output": "b", "history": [["only one"]]}, "wrong type",
     "wrong type: history items must be [user, assistant] string pairs"),
    ({"output": "b"}, "missing field",
     "missing field: expected 'messages', 'conversations' or 'instruction' + 'output'"),
])
def test_an_unusable_record_is_counted_under_its_reason(record, reason, example):
    log = SkipLog()
    assert to_messages(record, "f.jsonl:7", log) is None
    assert dict(log.reasons) == {reason: 1} and log.examples == [f"f.jsonl:7: {example}"]


def _examples(*lengths):
    """Example k of length n: inputs 10k + 0..n-1, targets one more, mask 1 from its second pair."""
    ex = SFTExamples()
    for k, n in enumerate(lengths):
        ex.inputs.append(np.arange(n, dtype=np.int32) + 10 * k)
        ex.targets.append(np.arange(n, dtype=np.int32) + 10 * k + 1)
        ex.loss_mask.append((np.arange(n) > 0).astype(np.float32))
    return ex


def test_packing_fills_rows_in_the_seeded_order_with_whole_examples():
    ex = _examples(3, 5, 2, 4)
    cfg = LoaderConfig(seq_len=8, rows_per_process=2, seed=1)
    # Seed 1 orders epoch 0 as examples 0, 1, 2, 3 and epoch 1 as 2, 0, 1, 3. Examples 0 + 1
    # fill a row exactly; example 2 would not fit after them, so it starts the next row.
    assert SFTRows(ex, cfg, 0, "pack").rows == [[0, 1], [2, 3]]
    assert SFTRows(ex, cfg, 1, "pack").rows == [[2, 0], [1], [3]]
    assert SFTRows(ex, cfg, 1, "pad").rows == [[2], [0], [1], [3]]
    # A row started by an example that did not fit holds just it so far: 4 + 4 fill it.
    assert SFTRows(_examples(6, 4, 4, 1), cfg, 0, "pack").rows == [[0], [1, 2], [3]]
    batch = next(sft_loader(ex, cfg, "pack"))
    np.testing.assert_array_equal(batch["inputs"], [[0, 1, 2, 10, 11, 12, 13, 14], [20, 21, 30, 31, 32, 33, 0, 0]])
    np.testing.assert_array_equal(batch["targets"], [[1, 2, 3, 11, 12, 13, 14, 15], [21, 22, 31, 32, 33, 34, 0, 0]])
    np.testing.assert_array_equal(batch["loss_mask"], [[0, 1, 1, 0, 1, 1, 1, 1], [0, 1, 0, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 2, 2, 2, 2, 2], [1, 1, 2, 2, 2, 2, 0, 0]])
    np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 0, 1, 2, 3, 0, 0]])


def test_padding_puts_one_example_per_row():
    ex = _examples(3, 5, 2, 4)
    row = SFTRows(ex, LoaderConfig(seq_len=6, rows_per_process=1, seed=1), 1, "pad")[0]  # example 2
    assert row["inputs"].tolist() == [20, 21, 0, 0, 0, 0] and row["targets"].tolist() == [21, 22, 0, 0, 0, 0]
    assert row["loss_mask"].tolist() == [0, 1, 0, 0, 0, 0] and row["segment_ids"].tolist() == [1, 1, 0, 0, 0, 0]
    assert row["positions"].tolist() == [0, 1, 0, 0, 0, 0]


def test_the_loader_refuses_an_unknown_packing_and_an_empty_set():
    with pytest.raises(DataError, match=r"^SFT packing must be 'pack' or 'pad', got 'tight'$"):
        sft_loader(_examples(3), LoaderConfig(8, 1), "tight")
    empty = SFTExamples(dropped_empty_mask=2)
    with pytest.raises(DataError, match=r"^no SFT examples left \(skipped 0, 2 with an empty loss mask\)$"):
        sft_loader(empty, LoaderConfig(8, 1))
