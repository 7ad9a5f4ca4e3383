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
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np

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

    def __init__(self, decay: float):
        self.decay, self.value, self.count = decay, 0.0, 0

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


class MetricsLog:
    """Append-only JSONL + TensorBoard; only process 0 writes."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = Path(out_dir) / "metrics.jsonl"
        self.writer = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a", encoding="utf-8")
            if tensorboard:
                from tensorboardX import SummaryWriter
                self.writer = SummaryWriter(str(Path(out_dir) / "tb"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        plain = {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in record.items()}
        plain = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in plain.items()}
        self.file.write(json.dumps(plain) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in _scalars(record):
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()
