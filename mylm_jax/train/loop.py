"""The training loop: `mylm pretrain --config configs/X.yaml [section.key=value ...]` (and SFT).

    start:  join the processes (multi-host), build the mesh, open the data source, open
            the run directory (one run per directory: new, --resume or --overwrite), then
            either create the state already sharded or restore the newest readable
            checkpoint onto this mesh (checked against this config and tokenizer); only then
            write config.yaml and tokenizer.json, so a refused start changes nothing there;
            print the sharding plan
    loop:   K batches -> train_steps (K optimizer steps in one call, dispatched, not
            awaited) -> read the *previous* call's metrics -> log each of its steps ->
            eval / sample / checkpoint when due (a call ends there: it holds fewer steps)
    stop:   at train.steps, or on SIGTERM / SIGINT after the current call: save and exit 0

Reading call c's metrics only after call c + 1 is dispatched keeps the device busy: the
host never waits for a step to finish before queueing the next one (nanodo's pattern).
K = train.steps_per_call (mylm_jax/train/step.py make_train_steps: the same numbers as K
single steps, with the per-call costs paid once).

The loop knows no model variant and no data format: the step returns the model's extra
loss terms and metrics under their own names (logged as they come), and the data is any
`DataSource` (mylm_jax/data/sources.py).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from mylm_jax import allocator
from mylm_jax.config import Config, ConfigError, config_to_dict, dump_config
from mylm_jax.data.errors import DataError
from mylm_jax.data.pretrain import LoaderConfig
from mylm_jax.data.sources import DataSource, ShardsSource, tokenizer_identity
from mylm_jax.fileio import atomic_write
from mylm_jax.model.accounting import flops_per_token
from mylm_jax.parallel import batch_divisor, initialize_distributed, make_mesh, shard_batch
from mylm_jax.startup import resume_gc
from mylm_jax.train.faults import KILL_AT_STEP, kill_if_asked
from mylm_jax.train.metrics import EMA, MetricsLog, peak_flops_per_device
from mylm_jax.train.progress import make_progress
from mylm_jax.train.run_dir import RunDir, data_fingerprint
from mylm_jax.train.score import byte_lengths
from mylm_jax.train.signals import StopFlag
from mylm_jax.train.state import create_state
from mylm_jax.train.step import k_step_batch, make_eval_step, make_train_steps

# The step's metrics that the loop turns into its own record fields; every other one
# (learning rates, the model's extra losses and metrics) is logged under its own name.
_STEP_FIELDS = ("loss", "grad_norm", "finite", "tokens")


class NonFiniteLoss(RuntimeError):
    """The run halted itself on a NaN / inf loss or gradient (train.on_nonfinite=halt),
    after saving a checkpoint of the last good state."""


def _check_batch(cfg: Config, mesh) -> int:
    B, M, P = cfg.train.batch_size, cfg.train.microbatches, jax.process_count()
    per_micro, divisor = B // M, batch_divisor(mesh)
    if B % P or per_micro % divisor:
        raise ConfigError(f"train.batch_size={B} with microbatches={M} must split over {P} process(es) and "
                          f"the {divisor} devices of the batch mesh axes (data x fsdp x expert)")
    return B // P


class Trainer:
    """Pretraining (and SFT, with another data source and an `init` of the weights).

    init(ts): fills a freshly created state (SFT: the pretrained weights); not called on resume.
    on_eval(step, result): called after every evaluation with its metrics; may raise to
    stop the run (`mylm search` prunes trials this way).
    resume / overwrite: continue the run in train.out_dir / delete it and start again
    (neither: train.out_dir must hold no earlier run; RunDir.for_training).
    quiet: no progress output (`--quiet`); the logs are written as always.
    """

    def __init__(self, cfg: Config, data: DataSource, resume: bool = False, init: Callable | None = None,
                 on_eval: Callable[[int, dict], None] | None = None, overwrite: bool = False, quiet: bool = False):
        self.quiet = quiet
        initialize_distributed(cfg.mesh)
        self.cfg, self.data, self.mesh, self.on_eval = cfg, data, make_mesh(cfg.mesh), on_eval
        self.local_batch = _check_batch(cfg, self.mesh)
        self.out_dir = Path(cfg.train.out_dir)
        if data.identity["vocab_size"] > cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                              f"{data.identity['vocab_size']} ids")
        self.tokenizer, self.identity, self.byte_len = data.tokenizer, dict(data.identity), None
        if self.tokenizer is not None:
            self.byte_len = byte_lengths(self.tokenizer)  # for val_bpb, as `mylm eval` counts bytes
            # The run keeps its own copy (written below, once a resumed checkpoint has accepted
            # it): checkpoints then name a tokenizer that stays with them.
            self.identity = tokenizer_identity(self.tokenizer, str(self.out_dir / "tokenizer.json"))
        self.loader = data.loader("train", self._loader_config(cfg.data.seed))
        self.data_fingerprint = data_fingerprint(data)  # in every checkpoint: a resume refuses replaced data
        t = cfg.train
        self.run_dir = RunDir.for_training(self.out_dir, t.keep_checkpoints, t.async_checkpoint, resume, overwrite,
                                           config=cfg)
        self.checkpointer = self.run_dir.checkpointer
        progress, restored = {}, None
        if resume:
            # The newest checkpoint that reads whole; shapes, optimizer and tokenizer are checked
            # against it before any file of the run is written.
            self.ts, data_state = self.run_dir.restore(None, cfg, self.mesh, self.identity,
                                                       data=self.data_fingerprint)
            restored = self.ts.step
            self.run_dir.set_aside_unreadable(restored)
            self.loader.set_state(data_state)
            progress = self.run_dir.meta(restored).get("progress", {})  # absent in older checkpoints
            print(f"resumed from {self.checkpointer.directory}/{restored}", flush=True)
        else:
            self.ts = create_state(cfg, self.mesh)
            if init is not None:
                init(self.ts)
        # The smoothed loss and the skip count continue from the checkpoint (its meta's "progress").
        self.ema = EMA(t.loss_ema, **progress.get("loss_ema", {}))
        self.skipped = progress.get("skipped_nonfinite", 0)
        if jax.process_index() == 0:
            print(self.ts.plan.describe(self.mesh), flush=True)
            if (line := allocator.note()) is not None:
                print(line, flush=True)  # e.g. "CPU steps run faster with jemalloc ..." (allocator.py)
        self.train_steps = make_train_steps(cfg, self.ts, cfg.train.steps_per_call)
        self.eval_step = make_eval_step(self.ts.graphdef)
        self.log = MetricsLog(self.out_dir, after_step=restored)  # a resume drops the steps it will redo
        self.saved_step = restored  # the newest step on disk that holds this state (save())
        if jax.process_index() == 0:
            atomic_write(self.out_dir / "config.yaml", dump_config(cfg))
            if self.tokenizer is not None:
                self.tokenizer.save(self.out_dir / "tokenizer.json")  # atomic too (fileio.py)

    def _loader_config(self, seed: int, batch: int | None = None) -> LoaderConfig:
        d = self.cfg.data
        bos = self.identity.get("bos_id") if d.bos else None
        return LoaderConfig(d.seq_len, batch or self.local_batch, d.loader, seed, bos, d.align_to_documents,
                            jax.process_index(), jax.process_count(), d.workers)

    def _meta(self) -> dict:
        return {"config": config_to_dict(self.cfg), "step": self.ts.step, "seed": self.cfg.train.seed,
                "tokenizer": self.identity, "data_path": self.cfg.data.path,
                "data_fingerprint": self.data_fingerprint,
                # read back by a resume: the smoothed loss then continues exactly
                "progress": {"loss_ema": self.ema.state(), "skipped_nonfinite": self.skipped}}

    def save(self, val_loss: float | None = None, wait: bool = False) -> None:
        """Checkpoint the current step, unless it is already saved: a stop signal or a halting
        NaN that comes right after a checkpoint (or the end of the run, or a resume) finds its
        step on disk, and orbax refuses to write a step twice."""
        if self.ts.step == self.saved_step:
            if wait:
                self.checkpointer.wait()
            return
        self.checkpointer.save(self.ts.step, self.ts.state, self.loader.get_state(), self._meta(), val_loss, wait)
        self.saved_step = self.ts.step

    def val_batches(self):
        """The host batches every evaluation reads: the val split's first train.eval_batches
        batches, the same rows each time."""
        loader = self.data.loader("val", self._loader_config(seed=0))
        # A small val split may hold fewer rows than a training batch: evaluate in smaller batches.
        divisor = batch_divisor(self.mesh)
        batch = min(self.local_batch, loader.rows(0)) // divisor * divisor
        if batch == 0:
            return
        if batch < self.local_batch:
            loader = self.data.loader("val", self._loader_config(seed=0, batch=batch))
        for _ in range(min(self.cfg.train.eval_batches, len(loader.dataset(0)))):
            yield next(loader)

    def evaluate(self) -> dict:
        loss_sum = count = n_bytes = 0.0
        for batch in self.val_batches():
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
        if self.on_eval is not None:
            self.on_eval(self.ts.step, out)
        return out

    def sample(self) -> str | None:
        if self.tokenizer is None or jax.process_count() > 1:
            return None
        from mylm_jax.generate import SamplingConfig, generate
        t = self.cfg.train
        prompt = self.tokenizer.encode(t.sample_prompt) if t.sample_prompt else [self.tokenizer.eos_id]
        model, _ = self.ts.models()
        # vocab_limit: a model vocabulary padded past the tokenizer's (e.g. 50304 rows for 50257
        # ids) must not sample the padding rows, which no tokenizer id can decode.
        sampling = SamplingConfig(t.sample_tokens, t.sample_temperature, seed=t.seed + self.ts.step,
                                  vocab_limit=self.tokenizer.vocab_size)
        return t.sample_prompt + self.tokenizer.decode(generate(model, [prompt], sampling)[0])

    def _start_progress(self) -> None:
        """What _record needs across steps: the clock, the progress printer, the FLOPs."""
        cfg, t = self.cfg, self.cfg.train
        self.tokens_per_step = t.batch_size * cfg.data.seq_len
        self.flops = flops_per_token(cfg.model, cfg.data.seq_len)
        self.peak = peak_flops_per_device(t.peak_tflops)
        self.last_time = time.perf_counter()  # (the EMA and skip count: __init__, from a resume)
        self.first_step, self.skipped_before, self.last_applied = self.ts.step, self.skipped, self.ts.step
        # A bar on a terminal, a plain line every log_every steps in a log file / CI / pipe,
        # nothing when quiet (progress.py); only process 0 prints.
        self.progress = None
        if jax.process_index() == 0:
            self.progress = make_progress(t.steps, self.ts.step, t.log_every, getattr(self, "quiet", False),
                                          sys.stdout)

    def _record_call(self, first_step: int, n: int, metrics: dict) -> None:
        """Read back one dispatched call's metrics ([K] per field) and record its first n steps,
        each with an equal share of the call's time."""
        m = jax.device_get(metrics)
        resume_gc()  # a call of steps has run: start-up is over (the `mylm` command paused it: startup.py)
        now = time.perf_counter()
        step_time, self.last_time = (now - self.last_time) / n, now
        for i in range(n):
            self._record(first_step + i, {k: v[i] for k, v in m.items()}, step_time)

    def _record(self, done_step: int, m: dict, step_time: float) -> None:
        """Log one step's metrics (host values), react to a non-finite loss."""
        t = self.cfg.train
        loss = float(m["loss"])
        record = {"step": done_step, "loss": loss, "grad_norm": float(m["grad_norm"]),
                  "step_time_s": step_time, "tokens_per_s": self.tokens_per_step / step_time}
        record.update({k: float(v) if np.ndim(v) == 0 else np.asarray(v)
                       for k, v in m.items() if k not in _STEP_FIELDS})
        if not bool(m["finite"]):
            self.skipped += 1
            record["skipped_nonfinite"] = self.skipped
            if t.on_nonfinite == "halt":
                # No step after this one was applied, in this call or the ones queued after it
                # (make_train_steps carries `halted`): the state is the last good one.
                self.log.write(record)
                self.save(wait=True)
                raise NonFiniteLoss(f"non-finite loss or gradient at step {done_step} (update not applied); "
                                    f"checkpoint saved at step {self.ts.step} in {self.checkpointer.directory}")
        else:
            record["loss_ema"] = self.ema.update(loss)
            self.last_applied = done_step
        if self.peak:
            record["mfu"] = record["tokens_per_s"] * self.flops / (self.peak * jax.device_count())
        if done_step % t.log_every == 0 or done_step == t.steps:
            self.log.write(record)
        if self.progress is not None:
            self.progress.step(done_step, record)
        if os.environ.get(KILL_AT_STEP) == str(done_step):
            # Tests only: let the earlier async saves commit first, so that "kill -9 at step N"
            # tests the resume from the last checkpoint, not the save race (MYLM_TEST_KILL_DURING_SAVE's).
            self.checkpointer.wait()
        kill_if_asked(KILL_AT_STEP, done_step)  # tests only (mylm_jax/train/faults.py)

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.say(text)

    def _evaluate_and_log(self, step: int) -> float | None:
        result = self.evaluate()
        if not result:
            return None
        self.log.write({"step": step, **result})
        self._say(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
        return result["val_loss"]

    def _steps_in_next_call(self, step: int) -> int:
        """K, or fewer so that the call ends at the next evaluation, sample, checkpoint or the end."""
        t = self.cfg.train
        ends = [t.steps] + [step - step % every + every for every in (t.eval_every, t.sample_every,
                                                                      t.checkpoint_every) if every]
        return max(1, min(t.steps_per_call, min(ends) - step))

    def _next_batches(self, n: int) -> tuple[dict, np.ndarray]:
        """n loader batches, padded to K with copies of the last (steps that are not applied),
        placed on the mesh as [K * M, B / M, T]; and the [K] mask of the steps to apply."""
        K, M = self.cfg.train.steps_per_call, self.cfg.train.microbatches
        host, active = k_step_batch([next(self.loader) for _ in range(n)], K)
        return shard_batch(host, self.mesh, K * M), active

    def run(self) -> int:
        """Train to train.steps (or until stopped); returns the last step."""
        t = self.cfg.train
        step = self.ts.step
        stop = StopFlag()
        stop.install()
        self._start_progress()
        pending = None  # (first step, steps, metrics) of a call dispatched but not yet read back
        # Carried on the device from call to call (make_train_steps). Placed as the calls return
        # it (replicated on the mesh): a host bool would make the second call trace again.
        halted = jax.device_put(np.bool_(False), jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))
        failed = True  # until the loop ends normally (_close)
        try:
            if t.eval_at_start and self.data.has_val and step == 0:
                self._evaluate_and_log(0)
            while step < t.steps and not stop.requested:
                n = self._steps_in_next_call(step)
                batch, active = self._next_batches(n)
                self.ts.state, metrics, halted = self.train_steps(self.ts.state, batch, active, halted)
                if pending is not None:
                    self._record_call(*pending)
                pending, step = (step + 1, n, metrics), step + n
                evaluating = self.data.has_val and t.eval_every and (step % t.eval_every == 0 or step == t.steps)
                saving = (t.checkpoint_every and step % t.checkpoint_every == 0) or step == t.steps
                sampling = t.sample_every and step % t.sample_every == 0
                if evaluating or saving or sampling:
                    self._record_call(*pending)
                    pending = None
                    val = self._evaluate_and_log(step) if evaluating else None
                    if sampling and (text := self.sample()) is not None and self.progress is not None:
                        self._say(f"step {step} sample: {text!r}")
                        self.log.write({"step": step, "sample": text})
                    if saving:
                        self.save(val, wait=step == t.steps)
                    self.last_time = time.perf_counter()  # the next step's time excludes eval, sample and save
            if pending is not None:
                self._record_call(*pending)
            if stop.requested:
                self.save(wait=True)
                print(f"\n{stop.requested}: saved step {step} to {self.checkpointer.directory}; "
                      f"resume with --resume", flush=True)
            failed = False
        finally:
            stop.restore()
            if self.progress is not None:
                self.progress.close()
            try:
                self._close(failed)
            finally:
                self.run_dir.release()  # another run may write here now
        if not stop.requested:
            self._report_skips(step)
        return step

    def _close(self, failing: bool) -> None:
        """Wait for the last save and close the logs. failing: an error is already on its way
        out (a full disk, say); a second one from the same cause would hide it."""
        try:
            self.checkpointer.wait()
        except Exception:
            if not failing:
                raise
        finally:
            self.log.close(failing)

    def _report_skips(self, step: int) -> None:
        """train.on_nonfinite=skip: one line on the steps not applied; a run whose last steps
        were all skipped ends as a halted one does (NonFiniteLoss, exit 3)."""
        skipped = self.skipped - self.skipped_before
        if not skipped:
            return
        newest = f"{self.checkpointer.directory}/{self.ts.step}"  # checkpoints count the updates applied
        line = (f"{skipped} of {step - self.first_step} steps were skipped (non-finite loss or gradient, "
                f"train.on_nonfinite=skip)")
        if self.last_applied != step:
            raise NonFiniteLoss(f"{line}: steps {self.last_applied + 1} to {step} were all skipped; the newest "
                                f"checkpoint, {newest}, holds the weights after step {self.last_applied}")
        line += f"; the newest checkpoint is {newest} (checkpoints count the {self.ts.step} updates applied)"
        print(f"mylm: note: {line}", flush=True)


def pretrain(cfg: Config, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> int:
    """Train to cfg.train.steps (or until stopped); returns the last step. quiet: no progress output."""
    try:
        return Trainer(cfg, ShardsSource(cfg), resume, overwrite=overwrite, quiet=quiet).run()
    except DataError as e:
        raise ConfigError(str(e)) from None
