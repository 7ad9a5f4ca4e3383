"""`mylm sft --config configs/sft_X.yaml`: supervised fine-tuning of a pretrained run.

    the pretrained run (sft.init_from)  ->  its model config, tokenizer and weights
    sft.data (alpaca / messages / conversations JSON)  ->  chat template, assistant-only
        loss mask, packed rows, a seeded val split  (mylm_jax/data/sft.py, sources.py)
    the pretraining Trainer (same step, checkpoints, resume, logs), with an SFT val split

The optimizer starts fresh by default (`sft.optimizer: continue` reuses the pretrained
run's moments). The chat template needs the tokenizer's chat tokens (<|system|>,
<|user|>, <|assistant|>, <|end|>). A tokenizer without them is an error, unless
`sft.extend_vocab: true`: the missing tokens are appended as new special ids, and the
embedding (and an untied head) gets new rows initialised to the mean of the base
tokenizer's rows (also when the new ids fit in the model's padded rows, which were never
trained as targets): a new token then starts as an "average" token, with the logit scale of the others,
instead of a random vector whose logit could dominate or vanish.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from mylm_jax.config import Config, ConfigError
from mylm_jax.data.errors import DataError
from mylm_jax.data.sources import SFTSource
from mylm_jax.model.params import path_name
from mylm_jax.parallel import make_mesh
from mylm_jax.tokenizer import Tokenizer
from mylm_jax.tokenizer.specials import CHAT_TOKENS
from mylm_jax.train.loop import Trainer
from mylm_jax.train.run_dir import RunDir

VOCAB_AXIS = {"embed": 0, "lm_head": 1}  # the parameters that grow with the vocabulary


def with_chat_tokens(tokenizer: Tokenizer, extend: bool, where: str) -> Tokenizer:
    missing = [t for t in CHAT_TOKENS if t not in tokenizer.special_tokens]
    if not missing:
        return tokenizer
    if not extend:
        raise ConfigError(f"the tokenizer of {where} has no chat tokens ({', '.join(missing)}); "
                          "set sft.extend_vocab=true to add them (the embeddings grow)")
    return Tokenizer(tokenizer.merges, [*tokenizer.special_tokens, *missing], tokenizer.pattern)


def with_new_rows(old: np.ndarray, size: int, trained: int, axis: int) -> np.ndarray:
    """`old` (rows on `axis`) with rows `trained` up to `size` set to the mean of its first
    `trained` rows: the base tokenizer's ids. The rows past them were the base's padding
    (never a target, only pushed down), so a new token takes the mean whether the vocabulary
    grows or the new ids fit in the padding."""
    rows = np.moveaxis(old, axis, 0)
    mean = rows[:trained].mean(axis=0)
    out = np.concatenate([rows[:trained], np.broadcast_to(mean, (size - trained, *mean.shape))])
    return np.moveaxis(out.astype(old.dtype), 0, axis)


def pretrained_init(base: RunDir, step: int | None, cfg: Config, keep_optimizer: bool, new_ids: range):
    """A function that loads the pretrained run's weights into a freshly created TrainState.
    step None: the newest checkpoint that reads whole (RunDir.restore falls back past damaged ones).
    new_ids: the tokens the SFT tokenizer adds (sft.extend_vocab); their rows become the mean
    of the base tokenizer's rows (with_new_rows)."""
    old_cfg = dataclasses.replace(base.config(step), mesh=cfg.mesh)
    old, _ = base.restore(step, old_cfg, make_mesh(cfg.mesh), check=False)
    old_state, step = old.state, old.step
    grown = old_cfg.model.vocab_size != cfg.model.vocab_size
    if keep_optimizer and grown:
        raise ConfigError("sft.optimizer=continue cannot be used with a grown vocabulary (the moments' shapes differ)")

    def init(ts) -> None:
        # Names of the whole (model, optimizer) state, so "0." (the model half) prefixes both
        # sides; sft.optimizer=continue takes the optimizer's half too, else it starts fresh.
        base_values = {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(old_state)[0]}
        taken = set()

        def take(path, leaf):
            name = path_name(path)
            if not (keep_optimizer or name.startswith("0.")):
                return leaf
            if name not in base_values:  # the model config is the base's: every weight has a source
                if name.startswith("0."):
                    raise ConfigError(f"the pretrained run {base.path} has no weight {name[2:]!r} for the SFT model")
                raise ConfigError(f"sft.optimizer=continue: the optimizer state of {base.path} has no {name[2:]!r} "
                                  "(the optim settings must be the base's; or sft.optimizer=fresh)")
            value = base_values[name]
            if name[2:] in VOCAB_AXIS and new_ids:
                value = with_new_rows(np.asarray(jax.device_get(value)), leaf.shape[VOCAB_AXIS[name[2:]]],
                                      new_ids.start, VOCAB_AXIS[name[2:]])
            taken.add(name)
            return jax.device_put(value, leaf.sharding)

        ts.state = jax.tree_util.tree_map_with_path(take, ts.state)
        weights = sum(name.startswith("0.") for name in taken)
        print(f"initialised from {base.path} step {step}: {weights} weights"
              + (" and the optimizer's state" if keep_optimizer else "")
              + (f" ({len(new_ids)} new token rows, the mean of the others)" if new_ids else ""), flush=True)

    return init


def sft_setup(cfg: Config) -> tuple[Config, SFTSource, Callable]:
    """(the SFT config with the base's model, the SFT data, the init that loads the base's weights):
    what `mylm sft` hands the Trainer."""
    if not cfg.sft.init_from:
        raise ConfigError("sft.init_from is empty: name the pretraining run directory to fine-tune")
    base = RunDir.open(cfg.sft.init_from)
    asked = None if cfg.sft.init_step < 0 else cfg.sft.init_step
    step = base.step(asked)
    # The base's tokenizer is checked against its checkpoint (RunDir.tokenizer); the SFT run's
    # own checkpoints record the (possibly extended) one, which a resume checks in turn.
    base_tokenizer = base.tokenizer(step)
    tokenizer = with_chat_tokens(base_tokenizer, cfg.sft.extend_vocab, cfg.sft.init_from)
    model = base.config(step).model
    model = dataclasses.replace(model, vocab_size=max(model.vocab_size, tokenizer.vocab_size))
    if cfg.data.seq_len > model.max_seq_len:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds the pretrained model's max_seq_len="
                          f"{model.max_seq_len}")
    cfg = dataclasses.replace(cfg, model=model)
    try:
        data = SFTSource(cfg, tokenizer)
    except DataError as e:
        raise ConfigError(str(e)) from None
    return cfg, data, pretrained_init(base, asked, cfg, cfg.sft.optimizer == "continue",
                                               range(base_tokenizer.vocab_size, tokenizer.vocab_size))


def sft(cfg: Config, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> int:
    cfg, data, init = sft_setup(cfg)
    try:
        return Trainer(cfg, data, resume, init, overwrite=overwrite, quiet=quiet).run()
    except DataError as e:
        raise ConfigError(str(e)) from None
