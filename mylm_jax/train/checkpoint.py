"""Checkpoints with orbax: model + optimizer + step, the data iterator, the config, the tokenizer.

    out_dir/checkpoints/<step>/state    model and optimizer arrays (each process writes its shards)
                              /data     the data loader's state (JSON): resume at the next batch
                              /meta     {"config", "tokenizer", "step", "seed", "data_path"} (JSON)

Saves are asynchronous (orbax writes in a background thread while training goes on)
and atomic: orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it when complete,
so a crash during a save leaves the previous checkpoints intact and the temporary
directory is ignored. Kept: the latest `keep` steps and the best by val loss.

Restoring reads against an abstract target carrying *this* run's shardings
(mylm_jax/train/state.py: restore_target; mylm_jax/train/run_dir.py opens runs), so a checkpoint written on one mesh
restores onto another (8-device FSDP -> 1 device, say): orbax reads each device's
slice of every array.

A save the file system refuses (a full disk, a quota, no permission) becomes
`CheckpointWriteError`, one line naming the step, the reason and the committed steps
that were kept; orbax's partial `<step>.orbax-checkpoint-tmp` is ignored by every read.
An asynchronous save's failure surfaces at the next save or wait, and names its own step.

A checkpoint can still be damaged after its commit (a disk error, a file truncated by a
copy or a full disk). Every read here turns such damage into `UnreadableCheckpoint`, a
one-line error naming the step and the cause, so that RunDir (mylm_jax/train/run_dir.py)
can fall back to the newest readable step instead of ending in a library traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

from mylm_jax.config import ConfigError
from mylm_jax.fileio import atomic_write
from mylm_jax.train.faults import KILL_DURING_SAVE, kill_if_asked


class UnreadableCheckpoint(ConfigError):
    """A committed step whose files cannot be read back (truncated, corrupt, missing).
    A ConfigError, so where nothing falls back it is still one line, not a traceback."""

    def __init__(self, directory: Path, step: int, error: BaseException):
        # Library errors (tensorstore's above all) run to many lines: keep the first, shortened.
        cause = (str(error).strip().splitlines() or [""])[0][:160]
        super().__init__(f"checkpoint step {step} in {directory} is unreadable ({type(error).__name__}: {cause})")
        self.step = step


class CheckpointWriteError(ConfigError):
    """A save that the file system refused: one line (the step, the OS's reason, what was kept)."""


def _chain(error: BaseException | None):
    """An error and the errors it was raised from or during."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def refused_write(error: BaseException) -> str | None:
    """The OS's reason when `error`, or an error it came from, is a write the file system
    refused (ENOSPC, EDQUOT, EACCES, ...); None for any other error."""
    for seen in _chain(error):
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        # tensorstore's errors reach Python as ValueError text carrying the errno
        if code := re.search(r"os_error_code='?(\d+)", str(seen)):
            return os.strerror(int(code.group(1)))
    return None


def _drop_refused_write_logs(record: logging.LogRecord) -> bool:
    """A logging filter: orbax's background save thread logs a refused write with its whole
    traceback before raising it to the caller, where Checkpointer makes it one line."""
    return not (record.exc_info and record.exc_info[1] is not None and refused_write(record.exc_info[1]))


def _late_callback(unraisable) -> bool:
    """Whether an error no caller could catch is tensorstore calling back into an event loop
    that orbax has closed: after a refused write, the writes of the same save still in flight
    fail in turn, and each would print such a traceback of the failure already reported as
    CheckpointWriteError."""
    frames, traceback = [], unraisable.exc_traceback
    while traceback is not None:
        frames.append(traceback.tb_frame.f_code.co_filename)
        traceback = traceback.tb_next
    return (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
            and bool(frames) and all(Path(f).parts[-2:] == ("asyncio", "base_events.py") for f in frames))


def _drop_late_callbacks() -> None:
    previous = sys.unraisablehook
    if getattr(previous, "drops_late_callbacks", False):
        return

    def hook(unraisable):
        if not _late_callback(unraisable):
            previous(unraisable)

    hook.drops_late_callbacks = True
    sys.unraisablehook = hook


class Checkpointer:
    def __init__(self, out_dir: str | Path, keep: int = 3, async_save: bool = True, read_only: bool = False):
        self.directory = Path(out_dir).absolute() / "checkpoints"
        keep_policy = policies.AnyPreservationPolicy([
            policies.LatestN(keep),
            # BestN sorts ascending by default and keeps the *last* n: reverse=True keeps the lowest loss.
            policies.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=keep_policy, read_only=read_only,
                                               enable_async_checkpointing=async_save, create=not read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        # A refused write is reported once, as CheckpointWriteError: not by orbax's log and
        # tensorstore's late callbacks as well.
        logging.getLogger("absl").addFilter(_drop_refused_write_logs)  # once: filters are a set
        _drop_late_callbacks()
        self.unfinished: int | None = None  # the step of an asynchronous save not yet waited for

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, meta: dict, val_loss: float | None = None,
             wait: bool = False) -> None:
        try:
            # orbax waits for the save before this one first: its failure is raised here.
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(nnx.to_pure_dict(state)),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta)),
                metrics=None if val_loss is None else {"val_loss": float(val_loss)}, force=True)
        except Exception as e:
            self._refused(self.unfinished if self.unfinished is not None else step, e)
            raise
        self.unfinished = step
        kill_if_asked(KILL_DURING_SAVE, step)  # tests only (mylm_jax/train/faults.py)
        if wait:
            self.wait()

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._refused(self.unfinished, e)
            raise
        self.unfinished = None

    def _refused(self, step: int | None, error: BaseException) -> None:
        """Raise CheckpointWriteError if `error` is a refused write of `step`'s save."""
        if (reason := refused_write(error)) is None:
            return
        self.unfinished = None  # reported once
        # The step whose files were refused, where the error names its orbax directory.
        if named := re.search(r"(\d+)\.orbax-checkpoint-tmp", "\n".join(map(str, _chain(error)))):
            step = int(named.group(1))
        kept = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        kept_text = f"the committed steps {', '.join(map(str, kept))} are whole" if kept else "no step was committed"
        raise CheckpointWriteError(
            f"cannot save checkpoint step {step} in {self.directory} ({reason}); {kept_text}"
            + ("; free space, then continue with --resume" if kept else "")) from None

    def read_meta(self, step: int) -> dict:
        """A step's meta, after the cheap checks: meta and data items readable, and the
        state's tree metadata (orbax's `_METADATA` JSON) whole. The arrays themselves are
        only checked by `restore`, which reads every byte of them."""
        try:
            items = self.manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()))
            tree = self.directory / str(step) / "state" / "_METADATA"
            if tree.is_file():
                json.loads(tree.read_text())
            return items["meta"]
        except Exception as e:  # whatever orbax / json raise for a damaged file
            raise UnreadableCheckpoint(self.directory, step, e) from None

    def rewrite_meta(self, step: int, meta: dict) -> None:
        """Replace a committed step's meta item. It is a plain JSON file inside the step
        directory (orbax's JsonSave layout), so it can be rewritten without touching the arrays;
        atomically, so a crash leaves the old meta or the new one, never a half (= a lost step)."""
        atomic_write(self.directory / str(step) / "meta" / "metadata", json.dumps(meta))

    def restore(self, step: int, abstract_state) -> tuple:
        """(state with the target's shardings, data state, meta) of a step."""
        target = nnx.to_pure_dict(abstract_state)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        except Exception as e:  # a truncated array file, a damaged index: tensorstore / json errors
            raise UnreadableCheckpoint(self.directory, step, e) from None
        state = jax.tree.map(lambda x: x, abstract_state)  # a copy to fill
        nnx.replace_by_pure_dict(state, restored["state"])
        return state, restored["data"], restored["meta"]

    def set_aside(self, step: int) -> Path:
        """Rename an unreadable step to `<step>.unreadable`: orbax then no longer lists it (a
        new save of that step would collide with it), and nothing is deleted."""
        target = self.directory / f"{step}.unreadable"
        (self.directory / str(step)).rename(target)
        self.manager.reload()
        return target

    def close(self) -> None:
        self.manager.close()
