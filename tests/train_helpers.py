"""A tiny prepared dataset and config for the training tests, and a `mylm` subprocess runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
        "First Citizen: You are all resolved rather to die than to famish? All: Resolved. resolved. ")


def make_dataset(directory: Path, tokenizer=None) -> str:
    """A tokenizer (vocab 300, or the one given) and ~200 short documents, prepared into token shards."""
    from mylm_jax.data.prepare import PrepareSettings, prepare
    from mylm_jax.tokenizer import train_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tok_path = directory / "tokenizer.json"
    (tokenizer or train_tokenizer([TEXT * 5], vocab_size=300, progress=False)).save(tok_path)
    words = TEXT.split()
    docs = [" ".join(words[i % 20:i % 20 + 5 + i % 17]) for i in range(200)]
    (directory / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    prepare(PrepareSettings(inputs=(str(directory / "docs.jsonl"),), out_dir=str(directory / "data"),
                            tokenizer=str(tok_path), val_fraction=0.1, workers=1), progress=False)
    return str(directory / "data")


def tiny_config(data_path: str, out_dir: Path, **sections) -> dict:
    cfg = {
        "model": dict(vocab_size=304, max_seq_len=32, d_model=32, n_layers=2, n_heads=4, position="rope",
                      norm="rmsnorm", mlp="swiglu", bias=False),
        "data": dict(path=data_path, seq_len=32),
        "optim": dict(lr=3e-3, warmup_steps=2, schedule="cosine"),
        "train": dict(steps=8, batch_size=4, log_every=1, eval_every=4, eval_batches=2, checkpoint_every=4,
                      out_dir=str(out_dir), async_checkpoint=True),
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def run_mylm(args: list[str], config: dict | None = None, config_path: Path | None = None,
             env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    if config is not None:
        config_path.write_text(yaml.safe_dump(config))
        args = [*args, "--config", str(config_path)]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "mylm_jax.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)


def steps_kept(out_dir: Path) -> list[int]:
    """The committed checkpoint steps of a run directory."""
    return sorted(int(p.name) for p in (Path(out_dir) / "checkpoints").iterdir() if p.name.isdigit())


def losses(out_dir: Path) -> dict[int, float]:
    """step -> training loss from a run's metrics.jsonl (the last record of a step wins)."""
    result = {}
    for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            result[record["step"]] = record["loss"]
    return result
