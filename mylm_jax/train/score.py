"""Scoring text with a trained model: loss (nats per token), perplexity, bits per byte.

Used by the Python API (`Run.score`, mylm_jax/api.py) and `mylm eval` (mylm_jax/cli/evaluate.py).

A text is scored as a document of its own: its tokens follow a start token (the
tokenizer's BOS when the run trained with `data.bos`, else EOS, the end of the document
before, as in the training stream), and every token of the text is predicted once. No EOS
is scored after it: the bytes counted are the text's own.

A text longer than the context (T = model.max_seq_len) is scored in windows:

    the first window holds the first T inputs and scores their T targets;
    each next window moves `stride` tokens on (default T // 2) and scores only its last
    `stride` targets (the last window: what is left),

so every token is scored exactly once, and every token past the first window sees at least
T - stride tokens of context. stride = T gives disjoint windows (cheapest, least context).

    loss          = sum of token losses / tokens            (nats per token)
    perplexity    = exp(loss)
    bits per byte = sum of token losses / ln 2 / UTF-8 bytes of the text

A prepared dataset's split is scored by `evaluate_dataset`, through the pretraining
loader (mylm_jax/data/sources.py ShardsSource) with the run's data settings; its bytes per
token come from the tokenizer (`byte_lengths`), as in the trainer's val_bpb.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mylm_jax.config import Config, ConfigError
from mylm_jax.data.errors import DataError
from mylm_jax.data.pretrain import LoaderConfig
from mylm_jax.data.sources import ShardsSource
from mylm_jax.tokenizer import Tokenizer, TokenizerError

WINDOWS_PER_CALL = 8  # rows of one jitted call: one compile per (8, T)


def token_losses_fn(graphdef):
    """jit((state, batch of [B, T] arrays) -> per-token losses [B, T] (0 where loss_mask is 0)), float32."""

    def losses(state, batch):
        model = nnx.merge(graphdef, state)
        logits_BTV, _ = model(batch["inputs"], batch["segment_ids"], batch["positions"])
        logits_BTV = logits_BTV.astype(jnp.float32)
        # -log softmax(z)[y] = logsumexp(z) - z[y]   (as train/loss.py's cross_entropy_sum)
        log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
        target_BT = jnp.take_along_axis(logits_BTV, batch["targets"][..., None], axis=-1)[..., 0]
        return (log_z_BT - target_BT) * batch["loss_mask"]

    return jax.jit(losses)


def windows(n_targets: int, context: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(start, end, first_scored) per window over a sequence of n_targets + 1 tokens (the start
    token, then the text's): inputs seq[start:end] predict seq[start + 1:end + 1], of which
    targets first_scored + 1 .. end are scored (1-based target index = position in seq)."""
    stride = context // 2 if stride is None else stride
    if not 0 < stride <= context:
        raise ConfigError(f"stride must be in [1, {context}] (the context), got {stride}")
    out, done = [], 0
    end = min(context, n_targets)
    while done < n_targets:
        out.append((max(0, end - context), end, done))
        done, end = end, min(end + stride, n_targets)
    return out


def byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """Bytes of text per token id (0 for special tokens), for bits per byte of token streams."""
    specials = set(tokenizer.special_tokens.values())
    return np.array([0 if i in specials else len(tokenizer.id_to_bytes(i)) for i in range(tokenizer.vocab_size)])


def start_token(tokenizer: Tokenizer, cfg: Config) -> int:
    """What a document follows in the training stream: BOS with data.bos, else the EOS before it."""
    try:
        return tokenizer.bos_id if cfg.data.bos else tokenizer.eos_id
    except TokenizerError:
        raise ConfigError("the run's tokenizer has no BOS / EOS token to start a text from") from None


def summary(loss_sum: float, tokens: int, n_bytes: int | None) -> dict:
    loss = loss_sum / tokens if tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)) if tokens else float("nan"),
            "bits_per_byte": loss_sum / math.log(2) / n_bytes if n_bytes else float("nan"),
            "tokens": tokens, "bytes": n_bytes}


class Scorer:
    """One model's jitted per-token loss; score ids or texts (reuse it: compiled once)."""

    def __init__(self, model: nnx.Module, cfg: Config, tokenizer: Tokenizer, stride: int | None = None):
        self.cfg, self.tokenizer, self.stride = cfg, tokenizer, stride
        self.context = cfg.model.max_seq_len
        graphdef, self.state = nnx.split(model)
        self.losses = token_losses_fn(graphdef)

    def batch_losses(self, batch: dict) -> np.ndarray:
        return np.asarray(jax.device_get(self.losses(self.state, {k: jnp.asarray(v) for k, v in batch.items()})))

    def token_losses(self, ids: list[int]) -> np.ndarray:
        """The loss (nats) of each of `ids`, each predicted from the start token and the ids
        before it, in windows (module docstring)."""
        seq = np.asarray([start_token(self.tokenizer, self.cfg), *ids], np.int32)
        n, T = len(ids), self.context
        out = np.zeros(n, np.float64)
        spans = windows(n, T, self.stride)
        for i in range(0, len(spans), WINDOWS_PER_CALL):
            chunk = spans[i:i + WINDOWS_PER_CALL]
            rows = {"inputs": np.zeros((WINDOWS_PER_CALL, T), np.int32),
                    "targets": np.zeros((WINDOWS_PER_CALL, T), np.int32),
                    "loss_mask": np.zeros((WINDOWS_PER_CALL, T), np.float32),
                    "segment_ids": np.zeros((WINDOWS_PER_CALL, T), np.int32),  # 0: padding
                    "positions": np.zeros((WINDOWS_PER_CALL, T), np.int32)}
            for r, (start, end, first) in enumerate(chunk):
                L = end - start
                rows["inputs"][r, :L] = seq[start:end]
                rows["targets"][r, :L] = seq[start + 1:end + 1]
                rows["loss_mask"][r, first - start:L] = 1.0
                rows["segment_ids"][r, :L] = 1
                rows["positions"][r, :L] = np.arange(L)
            losses = self.batch_losses(rows)
            for r, (start, end, first) in enumerate(chunk):
                out[first:end] = losses[r, first - start:end - start]
        return out

    def score_text(self, text: str) -> dict:
        """{"loss", "perplexity", "bits_per_byte", "tokens", "bytes"} of one text."""
        ids = self.tokenizer.encode(text)
        losses = self.token_losses(ids) if ids else np.zeros(0)
        return summary(float(losses.sum()), len(ids), len(text.encode("utf-8")))


def evaluate_dataset(model: nnx.Module, cfg: Config, tokenizer: Tokenizer | None, data_path: str | None = None,
                     split: str = "val", batches: int | None = None, batch_size: int | None = None) -> dict:
    """{"loss", "perplexity", "bits_per_byte", "tokens", "bytes", "batches"} over a prepared
    dataset's split (default: the run's data.path), in the run's rows (data.seq_len,
    data.loader, data.bos), unshuffled order of seed 0 as the trainer's val; batches None:
    the whole split once. bits_per_byte is nan without a tokenizer."""
    data_cfg = dataclasses.replace(cfg.data, path=data_path or cfg.data.path)
    try:
        source = ShardsSource(dataclasses.replace(cfg, data=data_cfg))
        if source.identity["vocab_size"] > cfg.model.vocab_size:
            raise ConfigError(f"{data_cfg.path}: its tokenizer has {source.identity['vocab_size']} ids, "
                              f"more than the model's {cfg.model.vocab_size}")
        if tokenizer is not None and source.identity["fingerprint"] != tokenizer.fingerprint():
            raise ConfigError(f"{data_cfg.path} was tokenized with another tokenizer than the run's "
                              "(token ids would mean other text)")
        d = data_cfg
        bos = source.identity.get("bos_id") if d.bos else None
        rows = batch_size or WINDOWS_PER_CALL
        loader = source.loader(split, LoaderConfig(d.seq_len, rows, d.loader, 0, bos, d.align_to_documents))
        n = len(loader.dataset(0))
    except DataError as e:
        raise ConfigError(str(e)) from None
    n = n if batches is None else min(batches, n)
    if n == 0:
        raise ConfigError(f"{data_cfg.path} ({split}): too few tokens for one batch of {rows} rows of {d.seq_len}")
    graphdef, state = nnx.split(model)
    losses_fn = token_losses_fn(graphdef)
    byte_len = byte_lengths(tokenizer) if tokenizer is not None else None
    loss_sum, tokens, n_bytes = 0.0, 0, 0
    for _ in range(n):
        batch = next(loader)
        losses = np.asarray(jax.device_get(losses_fn(state, {k: jnp.asarray(v) for k, v in batch.items()})))
        loss_sum += float(losses.sum())
        tokens += int(batch["loss_mask"].sum())
        if byte_len is not None:
            n_bytes += int((byte_len[batch["targets"]] * batch["loss_mask"]).sum())
    return {**summary(loss_sum, tokens, n_bytes or None), "batches": n}
