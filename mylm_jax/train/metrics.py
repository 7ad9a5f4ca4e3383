"""Training metrics: a JSONL log, TensorBoard event files, a smoothed loss, tokens/s and MFU.

    metrics.jsonl   one JSON object per logged step: {"step", "loss", "loss_ema", "lr",
                    "grad_norm", "tokens_per_s", "mfu", "step_time_s", ...}; evals add
                    {"val_loss", "val_ppl", "val_bpb"}. `mylm plot` and the studies read it.
    tb/             the same scalars for TensorBoard (tensorboardX); an array metric
                    element by element, e.g. experts' load as `expert_load/{layer}/{expert}`.

MFU (model FLOPs utilisation) = achieved model FLOPs / peak FLOPs
    = tokens/s x training FLOPs per token (6N + attention, mylm_jax/model/accounting.py)
      / (devices x peak FLOP/s per device).
The peak comes from `train.peak_tflops` or, for known accelerators, the table below
(dense bfloat16); on a CPU without a configured peak, MFU is not reported.

A resumed run redoes the steps after its checkpoint, so `MetricsLog(out_dir, after_step=N)`
first drops the records past step N from metrics.jsonl (rewritten atomically): each step
then has one record, the one of the trajectory the run continues. TensorBoard's event files
are append-only; the writer is opened with `purge_step=N + 1`, which tells TensorBoard to
hide the older events from step N + 1 on. The smoothed loss's state (`EMA.state`) travels
in the checkpoint's meta, so `loss_ema` continues as if the run had never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
from pathlib import Path

import jax
import numpy as np

from mylm_jax.config import ConfigError
from mylm_jax.fileio import atomic_write
from mylm_jax.startup import TENSORBOARDX_PROBES, without

PEAK_TFLOPS = {  # dense bf16 per chip, by device_kind prefix
    "NVIDIA H100": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100": 312.0, "NVIDIA L4": 121.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6": 918.0,
}


def peak_flops_per_device(configured_tflops: float) -> float | None:
    if configured_tflops > 0:
        return configured_tflops * 1e12
    kind = jax.devices()[0].device_kind
    for prefix, tflops in PEAK_TFLOPS.items():
        if kind.startswith(prefix):
            return tflops * 1e12
    return None


class EMA:
    """Exponential moving average with bias correction (the first values are not pulled to 0)."""

    def __init__(self, decay: float, value: float = 0.0, count: int = 0):
        self.decay, self.value, self.count = decay, value, count

    def state(self) -> dict:
        """What a checkpoint keeps to continue the average exactly (JSON keeps floats exactly)."""
        return {"value": self.value, "count": self.count}

    def update(self, x: float) -> float:
        self.count += 1
        self.value = self.decay * self.value + (1 - self.decay) * x
        return self.value / (1 - self.decay ** self.count)


def _scalars(record: dict):
    """TensorBoard's scalars: an array metric (MoE's expert_load [layers, experts], say) is
    written element by element, its tag the name and the index: expert_load/1/3."""
    for key, value in record.items():
        if isinstance(value, np.ndarray):
            for index in np.ndindex(value.shape):
                yield "/".join([key, *map(str, index)]), float(value[index])
        elif isinstance(value, (int, float, np.floating, np.integer)) and key != "step":
            yield key, float(value)


def drop_records_after(path: Path, step: int) -> int:
    """Rewrite a metrics.jsonl without the records past `step`; returns how many went.
    A last line cut short by a crash (no newline, not JSON) goes too; any other line stays."""
    if not path.is_file():
        return 0
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    kept = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if i == len(lines) - 1 and not text.endswith("\n"):
                continue  # torn by the crash
            kept.append(line)
            continue
        if not (isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step):
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch and boto3: it imports them when
    they are installed (torch costs 1-2 s of every run's start), and the log writes plain
    floats to a local folder (mylm_jax/startup.py)."""
    with without(*TENSORBOARDX_PROBES):
        from tensorboardX import SummaryWriter
    return SummaryWriter


class MetricsLog:
    """Append-only JSONL + TensorBoard; only process 0 writes.

    after_step: a resumed run's restored step; the records past it are dropped first.
    """

    def __init__(self, out_dir: str | Path, tensorboard: bool = True, after_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = Path(out_dir) / "metrics.jsonl"
        self.writer = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if after_step is not None:
                drop_records_after(self.path, after_step)
            self.file = open(self.path, "a", encoding="utf-8")
            if tensorboard:
                SummaryWriter = _summary_writer_class()
                purge = None if after_step is None else after_step + 1
                self.writer = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=purge)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        plain = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in record.items()}
        plain = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in plain.items()}
        try:
            self.file.write(json.dumps(plain) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk: one line (mylm: error:), the run stops there
            raise ConfigError(f"{self.path}: cannot write ({e.strerror or e})") from None
        if self.writer is not None:
            for key, value in _scalars(record):
                self.writer.add_scalar(key, value, record["step"])

    def close(self, failing: bool = False) -> None:
        """Close the log and the event files. failing: the run is already ending on an error
        (a full disk, say), which is the one to report: a log that cannot be flushed either
        is given up without a second error, and its unwritten events are dropped."""
        if not self.enabled:
            return
        try:
            self.file.close()
            if self.writer is not None:
                self.writer.close()
        except OSError as e:
            if self.writer is not None:
                _abandon(self.writer)
            if not failing:
                raise ConfigError(f"{self.path.parent}: cannot write the logs ({e.strerror or e})") from None


def _abandon(writer) -> None:
    """Mark tensorboardX's event files closed without flushing them: its exit hook would try
    the failed flush again and print a traceback at exit. (Its writer thread is a daemon.)"""
    for file_writer in getattr(writer, "all_writers", {}).values():
        events = file_writer.event_writer
        events._closed = True
        with contextlib.suppress(queue.Empty, OSError, ValueError):  # drop what is queued, then stop it
            while True:
                events._event_queue.get_nowait()
        events._worker.stop()
