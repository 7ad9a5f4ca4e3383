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
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies

from mylm_jax.train.faults import KILL_DURING_SAVE, kill_if_asked



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

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, meta: dict, val_loss: float | None = None,
             wait: bool = False) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(nnx.to_pure_dict(state)),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)),
            metrics=None if val_loss is None else {"val_loss": float(val_loss)}, force=True)
        kill_if_asked(KILL_DURING_SAVE, step)  # tests only (mylm_jax/train/faults.py)
        if wait:
            self.manager.wait_until_finished()

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def rewrite_meta(self, step: int, meta: dict) -> None:
        """Replace a committed step's meta item. It is a plain JSON file inside the step
        directory (orbax's JsonSave layout), so it can be rewritten without touching the arrays."""
        (self.directory / str(step) / "meta" / "metadata").write_text(json.dumps(meta))

    def restore(self, step: int, abstract_state) -> tuple:
        """(state with the target's shardings, data state, meta) of a step."""
        target = nnx.to_pure_dict(abstract_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        state = jax.tree.map(lambda x: x, abstract_state)  # a copy to fill
        nnx.replace_by_pure_dict(state, restored["state"])
        return state, restored["data"], restored["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
