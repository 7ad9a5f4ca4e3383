"""The pretraining loop: `mylm pretrain --config configs/X.yaml [section.key=value ...]`.

    start:  join the processes (multi-host), build the mesh, open the data, then either
            create the state already sharded or restore the latest checkpoint onto this mesh
    loop:   batch -> train_step (dispatched, not awaited) -> read the *previous* step's
            metrics -> log / eval / sample / checkpoint when due
    stop:   at train.steps, or on SIGTERM / SIGINT after the current step: save and exit 0

Reading step k's metrics only after step k + 1 is dispatched keeps the device busy: the
host never waits for a step to finish before queueing the next one (nanodo's pattern).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from mylm_jax.config import Config, ConfigError, config_to_dict, dump_config
from mylm_jax.data.errors import DataError
from mylm_jax.data.pretrain import LoaderConfig, pretrain_loader
from mylm_jax.data.shards import read_metadata
from mylm_jax.model.accounting import flops_per_token
from mylm_jax.parallel import batch_divisor, initialize_distributed, make_mesh, shard_batch
from mylm_jax.train.checkpoint import Checkpointer
from mylm_jax.train.metrics import EMA, MetricsLog, peak_flops_per_device
from mylm_jax.train.resume import check_compatible
from mylm_jax.train.state import TrainState, create_state, restore_target
from mylm_jax.train.step import make_eval_step, make_train_step


KILL_AT_STEP = "MYLM_TEST_KILL_AT_STEP"  # tests: SIGKILL self once this step's metrics are logged


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class StopFlag:
    """Set by SIGTERM / SIGINT; the loop saves and exits at the next step boundary."""

    requested: str = ""
    previous: dict = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop now
            signal.signal(signum, self.previous[signum])
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _check_batch(cfg: Config, mesh) -> int:
    B, M, P = cfg.train.batch_size, cfg.train.microbatches, jax.process_count()
    per_micro, divisor = B // M, batch_divisor(mesh)
    if B % P or per_micro % divisor:
        raise ConfigError(f"train.batch_size={B} with microbatches={M} must split over {P} process(es) and "
                          f"the {divisor} devices of the batch mesh axes (data x fsdp x expert)")
    return B // P


def tokenizer_identity(tokenizer, path: str) -> dict:
    return {"fingerprint": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size, "path": path,
            "bos_id": tokenizer.special_tokens.get("<|bos|>"), "eos_id": tokenizer.special_tokens.get("<|endoftext|>")}


class PretrainData:
    """Token shards written by `mylm data prepare` (data.path): train and val splits."""

    def __init__(self, cfg: Config):
        if not cfg.data.path:
            raise ConfigError("data.path is empty: prepare a dataset with `mylm data prepare` and set data.path")
        self.path, self.meta = cfg.data.path, read_metadata(cfg.data.path)
        self.has_val = "val" in self.meta["splits"] or self.meta["split"]["mode"] == "tail"
        self.tokenizer = None
        from mylm_jax.tokenizer import Tokenizer
        try:  # for samples and bits per byte; the shards carry its identity either way
            self.tokenizer = Tokenizer.load(self.meta["tokenizer"]["path"])
        except (OSError, ValueError):
            print(f"note: the dataset's tokenizer {self.meta['tokenizer']['path']} is not readable: "
                  "no samples, no bits per byte", flush=True)
        self.identity = self.meta["tokenizer"]

    def loader(self, split: str, loader_cfg: LoaderConfig):
        return pretrain_loader(self.path, split, loader_cfg)


class Trainer:
    """Pretraining (and SFT, with another `data` and an `init` of the weights)."""

    def __init__(self, cfg: Config, data, resume: bool = False, init=None):
        initialize_distributed(cfg.mesh)
        self.cfg, self.data, self.mesh = cfg, data, make_mesh(cfg.mesh)
        self.local_batch = _check_batch(cfg, self.mesh)
        self.out_dir = Path(cfg.train.out_dir)
        if data.identity["vocab_size"] > cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                              f"{data.identity['vocab_size']} ids")
        self.tokenizer, self.identity, self.byte_len = data.tokenizer, dict(data.identity), None
        if self.tokenizer is not None:
            specials = set(self.tokenizer.special_tokens.values())
            self.byte_len = np.array([0 if i in specials else len(self.tokenizer.id_to_bytes(i))
                                      for i in range(self.tokenizer.vocab_size)])
            # The run keeps its own copy: checkpoints then name a tokenizer that stays with them.
            path = self.out_dir / "tokenizer.json"
            if jax.process_index() == 0:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.tokenizer.save(path)
            self.identity = tokenizer_identity(self.tokenizer, str(path))
        self.loader = data.loader("train", self._loader_config(cfg.data.seed))
        self.checkpointer = Checkpointer(self.out_dir, cfg.train.keep_checkpoints, cfg.train.async_checkpoint)
        latest = self.checkpointer.latest_step() if resume else None
        if latest is not None:
            self.ts = self._restore(latest)
        else:
            self.ts = create_state(cfg, self.mesh)
            if init is not None:
                init(self.ts)
        self.train_step = make_train_step(cfg, self.ts.graphdef, self.ts.shardings)
        self.eval_step = make_eval_step(self.ts.graphdef)
        self.log = MetricsLog(self.out_dir)
        if jax.process_index() == 0:
            (self.out_dir / "config.yaml").write_text(dump_config(cfg))

    def _loader_config(self, seed: int, batch: int | None = None) -> LoaderConfig:
        d = self.cfg.data
        bos = self.identity.get("bos_id") if d.bos else None
        return LoaderConfig(d.seq_len, batch or self.local_batch, d.loader, seed, bos, d.align_to_documents,
                            jax.process_index(), jax.process_count(), d.workers)

    def _restore(self, step: int) -> TrainState:
        meta = self.checkpointer.read_meta(step)
        check_compatible(meta, self.cfg, self.identity)
        template, target = restore_target(self.cfg, self.mesh)
        state, data_state, _ = self.checkpointer.restore(step, target)
        self.loader.set_state(data_state)
        template.state = state
        print(f"resumed from {self.checkpointer.directory}/{step}", flush=True)
        return template

    def _meta(self) -> dict:
        return {"config": config_to_dict(self.cfg), "step": self.ts.step, "seed": self.cfg.train.seed,
                "tokenizer": self.identity, "data_path": self.cfg.data.path}

    def save(self, val_loss: float | None = None, wait: bool = False) -> None:
        self.checkpointer.save(self.ts.step, self.ts.state, self.loader.get_state(), self._meta(), val_loss, wait)

    def evaluate(self) -> dict:
        loader = self.data.loader("val", self._loader_config(seed=0))
        # A small val split may hold fewer rows than a training batch: evaluate in smaller batches.
        divisor = batch_divisor(self.mesh)
        batch = min(self.local_batch, loader.rows(0)) // divisor * divisor
        if batch == 0:
            return {}
        if batch < self.local_batch:
            loader = self.data.loader("val", self._loader_config(seed=0, batch=batch))
        n = min(self.cfg.train.eval_batches, len(loader.dataset(0)))
        loss_sum = count = n_bytes = 0.0
        for _ in range(n):
            batch = next(loader)
            s, c = jax.device_get(self.eval_step(self.ts.state, shard_batch(batch, self.mesh)))
            loss_sum, count = loss_sum + float(s), count + float(c)
            if self.byte_len is not None:
                n_bytes += float((self.byte_len[batch["targets"]] * batch["loss_mask"]).sum())
        if count == 0:
            return {}
        val = loss_sum / count
        out = {"val_loss": val, "val_ppl": math.exp(min(val, 50.0))}
        if n_bytes:
            # nats per token -> bits per byte: loss / ln 2 bits per token, bytes per token from the text
            out["val_bpb"] = loss_sum / math.log(2) / n_bytes
        return out

    def sample(self) -> str | None:
        if self.tokenizer is None or jax.process_count() > 1:
            return None
        from mylm_jax.generate import SamplingConfig, generate
        t = self.cfg.train
        prompt = self.tokenizer.encode(t.sample_prompt) if t.sample_prompt else [self.tokenizer.eos_id]
        model, _ = self.ts.models()
        sampling = SamplingConfig(t.sample_tokens, t.sample_temperature, seed=t.seed + self.ts.step)
        return t.sample_prompt + self.tokenizer.decode(generate(model, [prompt], sampling)[0])

    def run(self) -> int:
        cfg, t = self.cfg, self.cfg.train
        step = self.ts.step
        tokens_per_step = t.batch_size * cfg.data.seq_len
        flops = flops_per_token(cfg.model, cfg.data.seq_len)
        peak = peak_flops_per_device(t.peak_tflops)
        ema, stop = EMA(t.loss_ema), StopFlag()
        stop.install()
        bar = None
        if jax.process_index() == 0:
            from tqdm import tqdm
            bar = tqdm(total=t.steps, initial=step, desc="pretrain", dynamic_ncols=True, file=sys.stdout)
        pending, last_time, skipped = None, time.perf_counter(), 0

        def finish(item):
            """Read back one dispatched step's metrics, log them, react to a non-finite loss."""
            nonlocal last_time, skipped
            done_step, metrics = item
            m = jax.device_get(metrics)
            now = time.perf_counter()
            step_time, last_time = now - last_time, now
            loss = float(m["loss"])
            record = {"step": done_step, "loss": loss, "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"]),
                      "step_time_s": step_time, "tokens_per_s": tokens_per_step / step_time}
            if not bool(m["finite"]):
                skipped += 1
                record["skipped_nonfinite"] = skipped
                if t.on_nonfinite == "halt":
                    self.log.write(record)
                    self.save(wait=True)
                    raise NonFiniteLoss(f"non-finite loss or gradient at step {done_step} (update not applied); "
                                        f"checkpoint saved at step {self.ts.step} in {self.checkpointer.directory}")
            else:
                record["loss_ema"] = ema.update(loss)
            if peak:
                record["mfu"] = record["tokens_per_s"] * flops / (peak * jax.device_count())
            for key in ("muon_lr", "load_balance_loss", "router_z_loss", "expert_load"):
                if key in m:
                    record[key] = np.asarray(m[key]) if key == "expert_load" else float(m[key])
            if done_step % t.log_every == 0 or done_step == t.steps:
                self.log.write(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", ema=f"{record.get('loss_ema', float('nan')):.4f}",
                                lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}", refresh=False)
            if os.environ.get(KILL_AT_STEP) == str(done_step):
                os.kill(os.getpid(), signal.SIGKILL)

        try:
            if t.eval_at_start and self.data.has_val and step == 0 and (result := self.evaluate()):
                self.log.write({"step": 0, **result})
                if bar is not None:
                    bar.write("step 0: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
            while step < t.steps and not stop.requested:
                batch = shard_batch(next(self.loader), self.mesh, t.microbatches)
                self.ts.state, metrics = self.train_step(self.ts.state, batch)
                step += 1
                if pending is not None:
                    finish(pending)
                pending = (step, metrics)
                evaluating = self.data.has_val and t.eval_every and (step % t.eval_every == 0 or step == t.steps)
                saving = (t.checkpoint_every and step % t.checkpoint_every == 0) or step == t.steps
                if evaluating or saving or (t.sample_every and step % t.sample_every == 0):
                    finish(pending)
                    pending = None
                    val = None
                    if evaluating and (result := self.evaluate()):
                        val = result["val_loss"]
                        self.log.write({"step": step, **result})
                        if bar is not None:
                            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
                    if t.sample_every and step % t.sample_every == 0:
                        text = self.sample()
                        if text is not None and bar is not None:
                            bar.write(f"step {step} sample: {text!r}")
                            self.log.write({"step": step, "sample": text})
                    if saving:
                        self.save(val, wait=step == t.steps)
                    last_time = time.perf_counter()  # the next step's time excludes eval, sample and save
            if pending is not None:
                finish(pending)
            if stop.requested:
                self.save(wait=True)
                print(f"\n{stop.requested}: saved step {step} to {self.checkpointer.directory}; "
                      f"resume with --resume", flush=True)
        finally:
            stop.restore()
            if bar is not None:
                bar.close()
            self.checkpointer.wait()
            self.log.close()
        return step


def pretrain(cfg: Config, resume: bool = False) -> int:
    """Train to cfg.train.steps (or until stopped); returns the last step."""
    try:
        return Trainer(cfg, PretrainData(cfg), resume).run()
    except DataError as e:
        raise ConfigError(str(e)) from None
