"""A run directory: the one place that opens one.

    runs/x/config.yaml          the config the run last started with (for people)
    runs/x/tokenizer.json       the run's own copy of its tokenizer
    runs/x/metrics.jsonl, tb/   the logs (mylm_jax/train/metrics.py)
    runs/x/checkpoints/<step>/  state, data iterator, meta (mylm_jax/train/checkpoint.py)

`RunDir.open("runs/x")` reads a finished or running run (read-only): its steps, each
step's meta (config, tokenizer identity, data path), its config, its tokenizer (checked
against the fingerprint the checkpoint recorded), and `restore(step, cfg, mesh)`, which
puts a checkpoint onto any mesh. The trainer makes a writable one (`RunDir(out_dir,
Checkpointer(...))`) and resumes through the same `restore`.

What may change when a run continues from a checkpoint, and what may not:
structural settings (anything that changes a parameter's shape: vocab, widths, layers,
heads, experts, untied head, ...; the optimizer, since AdamW and Muon keep different
state; the tokenizer, since the same ids must mean the same text) are one-line errors.
Everything else may change (lr, schedule, steps, batch size, intervals, the data path
with the same tokenizer, the mesh), and the differences are printed, so a continued run
says how it differs from the one it continues.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import jax

from flax import nnx

from mylm_jax.config import Config, ConfigError, MeshConfig, apply_overrides, config_from_dict, config_to_dict
from mylm_jax.model.gpt import GPT
from mylm_jax.model.layout import convert_state, unrolled_shapes
from mylm_jax.model.params import param_shapes
from mylm_jax.parallel import make_mesh
from mylm_jax.tokenizer import Tokenizer
from mylm_jax.train.checkpoint import Checkpointer, UnreadableCheckpoint
from mylm_jax.train.state import TrainState, restore_target


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: Config, new: Config) -> list[str]:
    """`key: old -> new` for every setting that differs."""
    a, b = _flat(config_to_dict(old)), _flat(config_to_dict(new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_structure(meta: dict, cfg: Config, new_shapes: dict, tokenizer: dict | None) -> Config:
    """Raise ConfigError if `cfg` cannot continue the checkpoint: parameter shapes, optimizer,
    tokenizer. Returns the checkpoint's config.

    new_shapes: this run's parameter shapes (from the abstract state it builds anyway).
    Compared in the unrolled layout: scanned and unrolled (model.scan_layers) continue each other.
    """
    old = config_from_dict(meta["config"])
    step = meta.get("step")
    old_shapes = unrolled_shapes(param_shapes(nnx.eval_shape(lambda: GPT(old.model, nnx.Rngs(0)))), old.model)
    new_shapes = unrolled_shapes(new_shapes, cfg.model)
    for name in sorted(set(old_shapes) | set(new_shapes)):
        if old_shapes.get(name) != new_shapes.get(name):
            raise ConfigError(f"the checkpoint (step {step}) does not fit this model: parameter '{name}' is "
                              f"{old_shapes.get(name)} there and {new_shapes.get(name)} here "
                              "(model shapes cannot change when continuing a run)")
    if old.optim.name != cfg.optim.name:
        raise ConfigError(f"the checkpoint (step {step}) was trained with optim.name={old.optim.name}; "
                          f"this config says {cfg.optim.name} (their optimizer states differ)")
    if tokenizer is not None and meta.get("tokenizer"):
        then, now = meta["tokenizer"]["fingerprint"], tokenizer["fingerprint"]
        if then != now:
            raise ConfigError(f"the checkpoint (step {step}) was trained with tokenizer {then[:12]}...; "
                              f"this run's data uses {now[:12]}... (token ids would change meaning)")
    return old


def check_compatible(meta: dict, cfg: Config, new_shapes: dict, tokenizer: dict | None) -> list[str]:
    """Raise ConfigError on a structural mismatch; return (and print) the other changes."""
    return say_changes(check_structure(meta, cfg, new_shapes, tokenizer), cfg)


def say_changes(old: Config, cfg: Config) -> list[str]:
    changes = config_changes(old, cfg)
    if changes:
        print("continuing with changed settings: " + "; ".join(changes), flush=True)
    return changes


# What a run leaves in its directory, besides the config and tokenizer it rewrites.
RUN_FILES = ("checkpoints", "metrics.jsonl", "tb")


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


class RunDir:
    def __init__(self, path: str | Path, checkpointer: Checkpointer):
        self.path, self.checkpointer = Path(path), checkpointer
        self.unreadable: dict[int, str] = {}  # step -> why, warned about once

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run with at least one committed checkpoint (read-only)."""
        if not (Path(path) / "checkpoints").is_dir():
            raise ConfigError(f"{path}: no checkpoints/ directory (not a run directory?)")
        run = cls(path, Checkpointer(path, read_only=True))
        if run.latest_step is None:
            raise ConfigError(f"{path}: no committed checkpoint")
        return run

    @classmethod
    def for_training(cls, path: str | Path, keep: int, async_save: bool, resume: bool,
                     overwrite: bool) -> RunDir:
        """The writable run directory of a training run, one run per directory.

        resume:    continue the run there; refused when it has no committed checkpoint
        overwrite: start over; the earlier run's checkpoints and logs are removed first
        neither:   a new run; refused where an earlier run left checkpoints or logs, which
                   would otherwise mix with this one's (old steps kept as "latest", old
                   metrics.jsonl appended to)
        Checked before anything is written, so a refused start leaves the directory as it was.
        """
        path = Path(path)
        if resume and overwrite:
            raise ConfigError("--resume continues the run in train.out_dir, --overwrite deletes it: use one")
        leftovers = [name for name in RUN_FILES if (path / name).exists() and
                     not ((path / name).is_dir() and not any((path / name).iterdir()))]
        if resume and not cls.committed_steps(path):
            hint = ("start it again with --overwrite" if leftovers else "drop --resume to start a new run")
            raise ConfigError(f"--resume: no checkpoint in {path / 'checkpoints'}; {hint}")
        if leftovers and not resume:
            if not overwrite:
                raise ConfigError(f"{path} already holds a run ({', '.join(leftovers)}); add --resume to "
                                  "continue it or --overwrite to delete it and start again")
            if jax.process_index() == 0:
                for name in leftovers:
                    target = path / name
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                print(f"--overwrite: deleted the earlier run's {', '.join(leftovers)} in {path}", flush=True)
            if jax.process_count() > 1:  # no process may see the old steps once another has cleared them
                from jax.experimental import multihost_utils
                multihost_utils.sync_global_devices("mylm-overwrite")
        return cls(path, Checkpointer(path, keep, async_save))

    @staticmethod
    def committed_steps(path: Path) -> list[int]:
        """The steps committed in `path`, read without creating anything there."""
        if not (Path(path) / "checkpoints").is_dir():
            return []
        reader = Checkpointer(path, read_only=True)
        try:
            return reader.all_steps()
        finally:
            reader.close()

    # --- what is there ------------------------------------------------------------------

    @property
    def steps(self) -> list[int]:
        return self.checkpointer.all_steps()

    @property
    def latest_step(self) -> int | None:
        return self.checkpointer.latest_step()

    def _candidates(self, step: int | None) -> list[int]:
        """[step] when asked for one (it must be kept), else every step, newest first."""
        if step is None:
            if not self.steps:
                raise ConfigError(f"{self.path}: no committed checkpoint")
            return sorted(self.steps, reverse=True)
        if step not in self.steps:
            raise ConfigError(f"{self.path}: no checkpoint at step {step} (kept: {self.steps})")
        return [step]

    def _skip(self, error: UnreadableCheckpoint, explicit: bool, remaining: list[int]) -> None:
        """An unreadable step: an error when asked for by number, else warn (once) and go on."""
        if explicit:
            raise error
        if error.step not in self.unreadable:
            self.unreadable[error.step] = str(error)
            fallback = f"falling back to step {remaining[0]}" if remaining else "no older step is left"
            warn(f"{error}; {fallback}")
        if not remaining:
            raise ConfigError(f"{self.path}: no readable checkpoint (unreadable: {sorted(self.unreadable)})")

    def step(self, step: int | None = None) -> int:
        """`step` (a one-line error when the run does not keep it, or it is unreadable), or
        when None the newest step whose metadata reads."""
        candidates = self._candidates(step)
        for i, s in enumerate(candidates):
            try:
                self.checkpointer.read_meta(s)
                return s
            except UnreadableCheckpoint as e:
                self._skip(e, step is not None, candidates[i + 1:])
        raise AssertionError("unreachable: _skip raises on the last candidate")

    def meta(self, step: int | None = None) -> dict:
        """{"config", "tokenizer", "step", "seed", "data_path", "progress"} of a checkpoint."""
        return self.checkpointer.read_meta(self.step(step))

    def config(self, step: int | None = None) -> Config:
        return config_from_dict(self.meta(step)["config"])

    def tokenizer(self, step: int | None = None) -> Tokenizer:
        """The run's copy of its tokenizer (or the one its checkpoint names), which must be the
        one the checkpoint was trained with."""
        identity = self.meta(step)["tokenizer"]
        own = self.path / "tokenizer.json"
        path = own if own.is_file() else Path(identity["path"])
        try:
            tokenizer = Tokenizer.load(path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.path}: cannot read its tokenizer {path} ({e})") from None
        if tokenizer.fingerprint() != identity["fingerprint"]:
            raise ConfigError(f"{path}: tokenizer {tokenizer.fingerprint()[:12]}... is not the one the checkpoint "
                              f"was trained with ({identity['fingerprint'][:12]}...)")
        return tokenizer

    def set_config(self, overrides: list[str]) -> int:
        """Apply `section.key=value` overrides to the config stored in the latest checkpoint
        (what `mylm pretrain --continue` starts from); validated first, and held to
        check_structure's rules: the checkpoint's arrays must still fit the stored config.
        Returns the step."""
        step = self.step()
        meta = self.meta(step)
        new = config_from_dict(apply_overrides(meta["config"], overrides))
        check_structure(meta, new, param_shapes(nnx.eval_shape(lambda: GPT(new.model, nnx.Rngs(0)))), None)
        meta["config"] = config_to_dict(new)
        self.checkpointer.rewrite_meta(step, meta)
        return step

    # --- restoring ------------------------------------------------------------------------

    def restore(self, step: int | None, cfg: Config, mesh, identity: dict | None = None,
                check: bool = True) -> tuple[TrainState, dict]:
        """(TrainState on `mesh`, data iterator state) of a checkpoint, built for `cfg`;
        step None: the newest one that reads whole (see the module's docstring).

        check: refuse structural changes against the checkpoint's own config (and its
        tokenizer, given this run's `identity`), print the others.
        """
        template, target = restore_target(cfg, mesh)
        candidates = self._candidates(step)
        for i, s in enumerate(candidates):
            try:
                meta = self.meta(s)
                old = check_structure(meta, cfg, template.param_shapes, identity) if check else None
                saved_scan = config_from_dict(meta["config"]).model.scan_layers
                if saved_scan == cfg.model.scan_layers:
                    state, data_state, _ = self.checkpointer.restore(s, target)
                else:
                    state, data_state = self._restore_other_layout(s, cfg, mesh, saved_scan, target, template)
            except UnreadableCheckpoint as e:
                self._skip(e, step is not None, candidates[i + 1:])
                continue
            if old is not None:
                say_changes(old, cfg)
            template.state = state
            return template, data_state
        raise AssertionError("unreachable: _skip raises on the last candidate")

    def _restore_other_layout(self, step: int, cfg: Config, mesh, saved_scan: bool, target, template):
        """A checkpoint written with the other model.scan_layers: read in its own layout on this
        mesh, then every array (weights and optimizer moments alike) restacked or split by name
        (mylm_jax/model/layout.py) and placed with this run's shardings."""
        saved = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=saved_scan))
        _, saved_target = restore_target(saved, mesh)
        state, data_state, _ = self.checkpointer.restore(step, saved_target)
        return jax.device_put(convert_state(state, target, cfg.model), template.shardings), data_state

    def set_aside_unreadable(self, restored: int) -> None:
        """A training run restored `restored`: move the unreadable steps after it out of
        orbax's sight (it will save those steps again), saying where they went."""
        for s in sorted(self.unreadable):
            if s > restored and s in self.steps and jax.process_index() == 0:
                warn(f"moved the unreadable step {s} to {self.checkpointer.set_aside(s)}")

    def load_model(self, step: int | None = None):
        """(model, config, tokenizer) of a checkpoint, on one device: for generation and scoring.
        step None: the newest checkpoint that reads whole."""
        cfg = dataclasses.replace(self.config(step), mesh=MeshConfig(data=1))
        ts, _ = self.restore(step, cfg, make_mesh(cfg.mesh), check=False)
        model, _ = ts.models()
        return model, cfg, self.tokenizer(ts.step)
