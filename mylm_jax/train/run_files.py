"""What a run directory holds, and who made it: the run's own files and the user's.

By the rules of mylm_jax/ownership.py: a run marks its directory `.mylm` (kind "run"). A
directory made before markers is a MyLM run when its checkpoints/ holds a committed step
whose meta is MyLM's ({"config", "tokenizer", "step", ...}), or its metrics.jsonl starts
with a MyLM record (a run stopped before its first checkpoint). In a MyLM run, the run's
own files are orbax's step directories in checkpoints/ (`<step>`,
`<step>.orbax-checkpoint-tmp-*`, `<step>.unreadable`), TensorBoard's event files in tb/,
metrics.jsonl, config.yaml and tokenizer.json; anything else there is the user's and is
never deleted. In a directory MyLM did not make none of these is MyLM's (TensorBoard
events and orbax steps are written by other programs too): RunDir.for_training
(run_dir.py) refuses a new run, `--resume` or `--overwrite` that would write over or
delete one, naming the file. No jax here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from mylm_jax.ownership import listing, marked_as

# What a run writes in its directory: the logs and checkpoints an earlier run leaves (a new
# run would mix with them), and the config and tokenizer copy every start rewrites.
RUN_FILES = ("checkpoints", "metrics.jsonl", "tb")
REWRITTEN = ("config.yaml", "tokenizer.json")
_STEP = re.compile(r"\d+|\d+\.orbax-checkpoint-tmp-.*|\d+\.unreadable")


def _mylm_step(p: Path) -> bool:
    """A committed step directory whose meta MyLM wrote."""
    try:
        meta = json.loads((p / "meta" / "metadata").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and {"config", "tokenizer", "step"} <= set(meta)


def _mylm_metrics(p: Path) -> bool:
    """metrics.jsonl as MetricsLog writes it: its first record a step's metrics or an eval."""
    try:
        with open(p, encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return (isinstance(first, dict) and isinstance(first.get("step"), int)
            and ({"grad_norm", "tokens_per_s"} <= set(first) or "val_loss" in first))


@dataclasses.dataclass
class Survey:
    """What a run directory holds, sorted by who made it."""
    ours: bool                  # a MyLM run's directory: marked, or proven by its contents (module doc)
    leftovers: list[Path]       # an earlier run's own checkpoints, logs and events
    rewritten: list[Path]       # config.yaml, tokenizer.json
    foreign: list[Path]         # in checkpoints/ or tb/, not the run's own
    steps: list[int]            # the step directories among the leftovers


def survey(path: Path) -> Survey:
    marked = marked_as(path, "run")  # a dataset, an export, a quickstart directory: refused here
    ckpt, tb, metrics = path / "checkpoints", path / "tb", path / "metrics.jsonl"
    entries = (sorted(ckpt.iterdir()) if ckpt.is_dir() else []) + (sorted(tb.iterdir()) if tb.is_dir() else [])
    steps = [p for p in entries if p.parent == ckpt and _STEP.fullmatch(p.name) and p.is_dir()
             and (not p.name.isdigit() or _mylm_step(p) or (p / "_CHECKPOINT_METADATA").is_file())]
    events = [p for p in entries if p.parent == tb and p.name.startswith("events.out.tfevents.") and p.is_file()]
    logs = [metrics] if metrics.is_file() and (marked or _mylm_metrics(metrics)) else []
    ours = marked or any(_mylm_step(p) for p in steps if p.name.isdigit()) or bool(logs)
    own = steps + events + logs if ours else []
    foreign = [p for p in entries if p not in own] + ([metrics] if metrics.exists() and not logs else [])
    rewritten = [path / name for name in REWRITTEN if (path / name).exists()]
    return Survey(ours, own, rewritten, foreign, sorted(int(p.name) for p in steps if ours and p.name.isdigit()))


def deleted(s: Survey) -> str:
    """What --overwrite removed, in the words of the run directory's layout."""
    parts = []
    if s.steps:
        parts.append(f"checkpoints (step{'s' if len(s.steps) > 1 else ''} {', '.join(map(str, s.steps))})")
    other = [p for p in s.leftovers if p.parent.name == "checkpoints" and not p.name.isdigit()]
    if other:
        parts.append(f"unfinished or set-aside checkpoints ({listing(p.name for p in other)})")
    if any(p.name == "metrics.jsonl" for p in s.leftovers):
        parts.append("metrics.jsonl")
    events = sum(p.parent.name == "tb" for p in s.leftovers)
    if events:
        parts.append(f"tb ({events} event file{'s' if events > 1 else ''})")
    parts += [p.name for p in s.rewritten]
    return ", ".join(parts)
