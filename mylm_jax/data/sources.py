"""What the trainer trains on: a data source with train and val loaders.

The training loop (mylm_jax/train/loop.py) knows nothing of where rows come from. It
asks a source for four things, the `DataSource` protocol:

    identity    {"fingerprint", "vocab_size", "path", "bos_id", "eos_id"} of the tokenizer
                the ids come from; checkpoints record it, resumes compare it
    tokenizer   that Tokenizer (for shards: the dataset's own copy, shards.dataset_tokenizer),
                or None when an older dataset's tokenizer file is not readable (then no
                samples, no bits per byte)
    has_val     whether there is a val split to evaluate
    loader(split, LoaderConfig)
                a resumable iterator of numpy batches {inputs, targets, loss_mask,
                segment_ids, positions} [B, T] (get_state / set_state; rows(process) and
                dataset(process) size an eval)

Two sources ship: token shards written by `mylm data prepare` (pretraining:
ShardsSource) and conversations rendered with the chat template, split into train and
val (SFT: SFTSource, over mylm_jax/data/sft.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mylm_jax.config import Config, ConfigError
from mylm_jax.data.errors import SkipLog
from mylm_jax.data.pretrain import LoaderConfig, pretrain_loader
from mylm_jax.data.sft import SFTExamples, sft_loader
from mylm_jax.data.shards import dataset_tokenizer, read_metadata
from mylm_jax.tokenizer import Tokenizer, TokenizerError


class DataSource(Protocol):
    identity: dict
    tokenizer: Tokenizer | None
    has_val: bool

    def loader(self, split: str, loader_cfg: LoaderConfig): ...


def tokenizer_identity(tokenizer: Tokenizer, path: str) -> dict:
    """What a checkpoint records of its tokenizer: enough to refuse a different one."""

    def special(name: str) -> int | None:
        try:
            return getattr(tokenizer, name)
        except TokenizerError:  # this tokenizer has no such special token
            return None

    return {"fingerprint": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size, "path": path,
            "bos_id": special("bos_id"), "eos_id": special("eos_id")}


class ShardsSource:
    """Token shards written by `mylm data prepare` (data.path): train and val splits."""

    def __init__(self, cfg: Config):
        if not cfg.data.path:
            raise ConfigError("data.path is empty: prepare a dataset with `mylm data prepare` and set data.path")
        self.path, self.meta = cfg.data.path, read_metadata(cfg.data.path)
        self.has_val = "val" in self.meta["splits"] or self.meta["split"]["mode"] == "tail"
        # For samples and bits per byte: the dataset's own copy, checked against the
        # fingerprint (an older dataset: the path it recorded). The shards carry the
        # tokenizer's identity either way.
        self.tokenizer, path, note = dataset_tokenizer(self.path, self.meta)
        info = self.meta["tokenizer"]
        self.identity = {"fingerprint": info["fingerprint"], "vocab_size": info["vocab_size"], "path": path,
                         "bos_id": info.get("bos_id"), "eos_id": info.get("eos_id")}
        if note:
            print(f"note: {note}: no samples, no bits per byte", flush=True)

    def loader(self, split: str, loader_cfg: LoaderConfig):
        return pretrain_loader(self.path, split, loader_cfg)


class SFTSource:
    """Rendered conversations (sft.data) split into train and val (seeded by data.seed)."""

    def __init__(self, cfg: Config, tokenizer: Tokenizer):
        if not cfg.sft.data:
            raise ConfigError("sft.data is empty: list the JSON / JSONL files of conversations")
        self.tokenizer, self.packing = tokenizer, cfg.sft.packing
        self.identity = tokenizer_identity(tokenizer, "")
        examples = SFTExamples.load(list(cfg.sft.data), tokenizer, cfg.data.seq_len, SkipLog())
        self.report = examples.report()
        order = np.random.default_rng(cfg.data.seed).permutation(len(examples))
        n_val = int(round(cfg.sft.val_fraction * len(examples)))
        self.val, self.train = examples.subset(order[:n_val]), examples.subset(order[n_val:])
        self.has_val = len(self.val) > 0
        r = self.report
        print(f"sft data: {r['records']} records, {r['kept']} kept ({len(self.train)} train, {len(self.val)} val), "
              f"{r['skipped']['skipped']} skipped, {r['dropped_empty_mask']} with nothing to learn after "
              f"truncation to {cfg.data.seq_len}; {r['loss_tokens']:,} trained tokens", flush=True)

    def loader(self, split: str, loader_cfg: LoaderConfig):
        return sft_loader(self.train if split == "train" else self.val, loader_cfg, self.packing)
