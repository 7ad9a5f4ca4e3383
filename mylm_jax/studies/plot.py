"""`mylm plot RUN_DIR [RUN_DIR ...]`: figures of one or more training runs' logs.

    mylm plot runs/a runs/b --out runs/plots [--x tokens] [--smooth 0.9]

Reads each run's metrics.jsonl (or, where a run has only TensorBoard event files, the
scalars in tb/) and writes one PNG per quantity, every run a line:

    loss.png         training loss: raw (thin) and smoothed (EMA, bias-corrected)
    val_loss.png     validation loss at the evals
    lr.png           learning rate (and Muon's lr, dashed, for Muon runs)
    grad_norm.png    global gradient norm before clipping (log scale)
    tokens_per_s.png throughput
    expert_load_<run>.png   MoE runs: each expert's share of tokens per layer over steps

--x tokens aligns runs by tokens seen (step x batch_size x seq_len from the run's
config.yaml), which is the fair axis when runs differ in batch size.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from mylm_jax.studies.results import figure, read_metrics, save_figure, series
from mylm_jax.studies.script import StudyError

# An array metric's element tag: name/1/3 (older runs wrote expert_load/layer1/expert3).
ARRAY_INDEX = re.compile(r"(?:layer|expert)?(\d+)")

QUANTITIES = {  # file stem -> (key, y label, log scale)
    "val_loss": ("val_loss", "validation loss", False),
    "lr": ("lr", "learning rate", False),
    "grad_norm": ("grad_norm", "gradient norm", True),
    "tokens_per_s": ("tokens_per_s", "tokens / s", False),
}


def read_tensorboard(tb_dir: Path) -> list[dict]:
    """Scalars of TensorBoard event files as metrics records (TFRecord framing, Event protos)."""
    from tensorboardX.proto.event_pb2 import Event

    by_step: dict[int, dict] = {}
    for path in sorted(tb_dir.glob("**/events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):  # [u64 length][u32 crc][payload][u32 crc]
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            payload = data[offset + 12: offset + 12 + length]
            offset += 12 + length + 4
            event = Event.FromString(payload)
            for value in event.summary.value:
                record = by_step.setdefault(event.step, {"step": event.step})
                name, *index = value.tag.split("/")
                if index and all(ARRAY_INDEX.fullmatch(p) for p in index):  # an array metric's element
                    key = tuple(int(ARRAY_INDEX.fullmatch(p).group(1)) for p in index)
                    record.setdefault("_arrays", {}).setdefault(name, {})[key] = value.simple_value
                else:
                    record[value.tag] = value.simple_value
    records = []
    for step in sorted(by_step):
        r = by_step[step]
        for name, elements in r.pop("_arrays", {}).items():
            shape = tuple(max(k[d] for k in elements) + 1 for d in range(len(next(iter(elements)))))
            array = np.zeros(shape)
            for k, v in elements.items():
                array[k] = v
            r[name] = array.tolist()
        records.append(r)
    return records


def load_run(run_dir: str) -> tuple[list[dict], int]:
    """(records, tokens per step or 0 when unknown) of one run; one-line errors for bad input."""
    path = Path(run_dir)
    if not path.is_dir():
        raise StudyError(f"{run_dir}: no such run directory")
    if (path / "metrics.jsonl").is_file() and (path / "metrics.jsonl").stat().st_size:
        records = read_metrics(path)
    elif list(path.glob("tb/**/events.out.tfevents.*")):
        records = read_tensorboard(path / "tb")
    else:
        raise StudyError(f"{run_dir}: no metrics.jsonl or TensorBoard events (tb/) to plot")
    if not any("loss" in r or "val_loss" in r for r in records):
        raise StudyError(f"{run_dir}: the logs hold no loss records")
    tokens_per_step = 0
    if (path / "config.yaml").is_file():
        import yaml
        cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
        tokens_per_step = cfg.get("train", {}).get("batch_size", 0) * cfg.get("data", {}).get("seq_len", 0)
    return records, tokens_per_step


def smooth(values: np.ndarray, decay: float) -> np.ndarray:
    """Bias-corrected EMA, as the trainer's loss_ema (non-finite values skipped)."""
    out, acc, count = np.empty_like(values), 0.0, 0
    for i, v in enumerate(values):
        if np.isfinite(v):
            count += 1
            acc = decay * acc + (1 - decay) * v
        out[i] = acc / (1 - decay ** count) if count else np.nan
    return out


def plot_runs(run_dirs: list[str], out_dir: str | Path, x: str = "step", decay: float = 0.9) -> list[str]:
    runs = {}
    for run_dir in run_dirs:
        records, per_step = load_run(run_dir)
        if x == "tokens" and not per_step:
            raise StudyError(f"{run_dir}: no config.yaml with batch_size and seq_len, needed for --x tokens")
        name = Path(run_dir).resolve().name
        while name in runs:
            name += "'"
        runs[name] = (records, per_step if x == "tokens" else 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    xlabel = "tokens" if x == "tokens" else "step"
    written = []

    fig, ax = figure(figsize=(7, 4))
    for i, (name, (records, scale)) in enumerate(runs.items()):
        steps, loss = series(records, "loss")
        if len(steps):
            color = f"C{i}"
            ax.plot(steps * scale, loss, color=color, alpha=0.3, lw=0.8)
            ax.plot(steps * scale, smooth(loss, decay) if decay else loss, color=color, label=name)
    ax.set(xlabel=xlabel, ylabel="training loss", title="training loss (thin: raw, thick: smoothed)")
    ax.legend()
    written.append(save_figure(fig, out / "loss.png"))

    for stem, (key, label, log) in QUANTITIES.items():
        if not any(key in r for records, _ in runs.values() for r in records):
            continue
        fig, ax = figure(figsize=(7, 4))
        for i, (name, (records, scale)) in enumerate(runs.items()):
            steps, values = series(records, key)
            if len(steps):
                ax.plot(steps * scale, values, color=f"C{i}", label=name, marker="o" if key == "val_loss" else None)
            if key == "lr":
                steps, values = series(records, "muon_lr")
                if len(steps):
                    ax.plot(steps * scale, values, color=f"C{i}", ls="--", label=f"{name} (Muon)")
        if log:
            ax.set_yscale("log")
        ax.set(xlabel=xlabel, ylabel=label, title=label)
        ax.legend()
        written.append(save_figure(fig, out / f"{stem}.png"))

    for name, (records, scale) in runs.items():
        steps = [r["step"] for r in records if r.get("expert_load") is not None]
        if not steps:
            continue
        load = np.array([r["expert_load"] for r in records if r.get("expert_load") is not None])  # [S, L, E]
        L, E = load.shape[1:]
        fig, axes = figure(1, L, figsize=(4 * L, 3.5), squeeze=False)
        for layer in range(L):
            ax = axes[0, layer]
            for e in range(E):
                ax.plot(np.array(steps) * scale, load[:, layer, e], lw=1, label=f"expert {e}")
            ax.axhline(1.0 / E, color="k", ls=":", lw=0.8)  # the balanced share
            ax.set(xlabel=xlabel, ylabel="share of tokens", title=f"{name}: layer {layer}")
        axes[0, 0].legend(fontsize=7)
        written.append(save_figure(fig, out / f"expert_load_{name}.png"))
    return written
