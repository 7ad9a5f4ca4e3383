"""Supervised fine-tuning batches: conversations -> chat template -> ids + loss mask -> rows.

Accepted record shapes (JSON array, JSONL or Parquet rows):
    alpaca         {"instruction", "input" (optional), "output", "system" (optional),
                    "history" (optional: [[user, assistant], ...])}
                   -> user: instruction, then a blank line and input if any; assistant: output
    messages       {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
    conversations  {"conversations": [...]} with {"from": "human"|"gpt"|"system", "value"}
                   (ShareGPT) or {"role", "content"} items

Each conversation is rendered by the tokenizer's chat template into ids and a mask that
is 1 on assistant content and its end-of-turn token. Targets are shifted before
anything else: inputs ids[:-1], targets ids[1:], loss_mask mask[1:] (the mask of the
token being predicted). Then an example is truncated to T pairs; one whose loss mask is
all zero after that (nothing left to learn) is dropped and counted.

Rows: `pack` fills each row with whole examples in a seeded shuffled order (an example
that does not fit starts a new row; the rest of the row is padding), each a segment
with positions from 0; `pad` puts one example per row. Batches are the same dicts as
pretraining's, with the same exact-resume iterator (mylm_jax/data/pretrain.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mylm_jax.data.errors import DataError, SkipLog
from mylm_jax.data.pretrain import EpochLoader, LoaderConfig, empty_row
from mylm_jax.data.readers import expand_inputs, read_records

ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


def to_messages(record: Any, location: str, log: SkipLog) -> list[dict] | None:
    """One record in any accepted shape -> [{"role", "content"}], or None (skipped, counted)."""
    def bad(reason):
        log.skip(location, reason, reason.split(":")[0].split(" (")[0])
        return None

    if not isinstance(record, dict):
        return bad(f"wrong type: record is {type(record).__name__}, expected an object")
    if "messages" in record or "conversations" in record:
        turns = record.get("messages", record.get("conversations"))
        if not isinstance(turns, list) or not turns:
            return bad("wrong type: messages must be a non-empty list")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict):
                return bad(f"wrong type: message {i} is {type(turn).__name__}, expected an object")
            role = turn.get("role", turn.get("from"))
            content = turn.get("content", turn.get("value"))
            if role not in ROLES:
                return bad(f"unknown role: message {i} has role {role!r} (expected one of {', '.join(ROLES)})")
            if not isinstance(content, str):
                return bad(f"wrong type: message {i} content is {type(content).__name__}, expected a string")
            messages.append({"role": ROLES[role], "content": content})
        return messages
    if "instruction" in record and "output" in record:
        fields = {k: record.get(k) for k in ("instruction", "input", "output", "system")}
        for k, v in fields.items():
            if v is not None and not isinstance(v, str):
                return bad(f"wrong type: field '{k}' is {type(v).__name__}, expected a string")
        messages = [{"role": "system", "content": fields["system"]}] if fields["system"] else []
        for pair in record.get("history") or []:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                return bad("wrong type: history items must be [user, assistant] string pairs")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        user = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"] else "")
        return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": fields["output"]}]
    return bad("missing field: expected 'messages', 'conversations' or 'instruction' + 'output'")


@dataclass
class SFTExamples:
    """Rendered, shifted, truncated examples: lists of (inputs, targets, loss_mask) arrays."""

    inputs: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    loss_mask: list[np.ndarray] = field(default_factory=list)
    records: int = 0  # records the readers yielded
    unusable: int = 0  # of those, skipped: wrong shape, or refused by the chat template
    truncated: int = 0
    dropped_empty_mask: int = 0
    log: SkipLog = field(default_factory=SkipLog)

    @classmethod
    def load(cls, inputs: list[str], tokenizer, seq_len: int, log: SkipLog | None = None) -> "SFTExamples":
        ex = cls(log=log if log is not None else SkipLog())
        for path in expand_inputs(inputs):
            for location, record in read_records(path, ex.log, columns=None):
                ex.records += 1
                messages = to_messages(record, location, ex.log)
                if messages is None:
                    ex.unusable += 1
                    continue
                try:
                    ids, mask = tokenizer.render(messages)
                except ValueError as e:  # the template's own check (TokenizerError)
                    ex.log.skip(location, str(e), "template")
                    ex.unusable += 1
                    continue
                ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.float32)
                pairs = len(ids) - 1
                if pairs > seq_len:
                    ex.truncated += 1
                n = min(pairs, seq_len)
                if n <= 0 or mask[1:n + 1].sum() == 0:
                    ex.dropped_empty_mask += 1
                    continue
                ex.inputs.append(ids[:n])
                ex.targets.append(ids[1:n + 1])
                ex.loss_mask.append(mask[1:n + 1])
        return ex

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices) -> "SFTExamples":
        """The examples at `indices` (e.g. a train / val split); the reports stay the whole set's."""
        pick = lambda xs: [xs[i] for i in indices]  # noqa: E731
        return dataclasses.replace(self, inputs=pick(self.inputs), targets=pick(self.targets),
                                   loss_mask=pick(self.loss_mask))

    def report(self) -> dict:
        # records in = kept + skipped + dropped, always. `records` counts those the readers
        # yielded; a line or file the readers skipped is in the log but was never yielded.
        reader_skips = self.log.total - self.unusable
        return {"records": self.records + reader_skips, "kept": len(self),
                "skipped": self.log.report(), "dropped_empty_mask": self.dropped_empty_mask,
                "truncated": self.truncated,
                "loss_tokens": int(sum(m.sum() for m in self.loss_mask)),
                "tokens": int(sum(len(x) for x in self.inputs))}


class SFTRows:
    """Rows of one epoch of SFT examples (a grain data source)."""

    def __init__(self, examples: SFTExamples, cfg: LoaderConfig, epoch: int, packing: Literal["pack", "pad"]):
        self.examples, self.cfg, self.epoch, self.packing = examples, cfg, epoch, packing
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(examples))
        if packing == "pad":
            self.rows = [[int(i)] for i in order]
        else:
            self.rows, current, used = [], [], 0
            for i in order:
                n = len(examples.inputs[i])
                if used + n > cfg.seq_len:
                    self.rows.append(current)
                    current, used = [], 0
                current.append(int(i))
                used += n
            if current:
                self.rows.append(current)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"SFTRows(n={len(self.examples)}, T={self.cfg.seq_len}, {self.packing}, epoch={self.epoch})"

    def __getitem__(self, r: int) -> dict[str, np.ndarray]:
        row, filled = empty_row(self.cfg.seq_len), 0
        for segment, i in enumerate(self.rows[r], start=1):
            ex, n = self.examples, len(self.examples.inputs[i])
            row["inputs"][filled:filled + n] = ex.inputs[i]
            row["targets"][filled:filled + n] = ex.targets[i]
            row["loss_mask"][filled:filled + n] = ex.loss_mask[i]
            row["segment_ids"][filled:filled + n] = segment
            row["positions"][filled:filled + n] = np.arange(n)
            filled += n
        return row


def sft_loader(examples: SFTExamples, cfg: LoaderConfig, packing: Literal["pack", "pad"] = "pack") -> EpochLoader:
    if packing not in ("pack", "pad"):
        raise DataError(f"SFT packing must be 'pack' or 'pad', got {packing!r}")
    if not len(examples):
        raise DataError(f"no SFT examples left ({examples.log.summary()}, "
                        f"{examples.dropped_empty_mask} with an empty loss mask)")
    return EpochLoader(lambda epoch: SFTRows(examples, cfg, epoch, packing), cfg)
