"""A run directory: the one place that opens one.

    runs/x/config.yaml          the config the run last started with (for people)
    runs/x/tokenizer.json       the run's own copy of its tokenizer
    runs/x/metrics.jsonl, tb/   the logs (mylm_jax/train/metrics.py)
    runs/x/checkpoints/<step>/  state, data iterator, meta (mylm_jax/train/checkpoint.py)

    runs/x/.mylm                the marker: a MyLM run made this directory (mylm_jax/ownership.py)
    runs/x/.mylm.lock           locked while a run writes here (mylm_jax/train/lock.py)

`RunDir.open("runs/x")` reads a finished or running run (read-only): its steps, each
step's meta (config, tokenizer identity, data path), its config, its tokenizer (checked
against the fingerprint the checkpoint recorded), and `restore(step, cfg, mesh)`, which
puts a checkpoint onto any mesh. The trainer makes a writable one (`RunDir(out_dir,
Checkpointer(...))`) and resumes through the same `restore`.

What may change when a run continues from a checkpoint, and what may not:
structural settings (anything that changes a parameter's shape: vocab, widths, layers,
heads, experts, untied head, ...; the optimizer, since AdamW and Muon keep different
state, and gradient clipping on or off, a stage of the optimizer's own; the tokenizer, since the same ids must mean the same text) are one-line errors.
Everything else may change (lr, schedule, steps, batch size, intervals, the data path
with the same tokenizer, the mesh), and the differences are printed, so a continued run
says how it differs from the one it continues. The data itself may not change under the
same data.path: every checkpoint records its dataset's fingerprint (data/shards.py), and a
resume over a dataset replaced since is refused (`check_data`); another data.path is the
explicit way to go on with other data.

Who made the directory, and what --overwrite may delete: mylm_jax/train/run_files.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
from pathlib import Path

import jax

from flax import nnx

from mylm_jax.config import (Config, ConfigError, MeshConfig, apply_overrides, config_from_dict, config_to_dict,
                             load_config)
from mylm_jax.data.shards import dataset_fingerprint
from mylm_jax.data.sources import ShardsSource
from mylm_jax.model.gpt import GPT
from mylm_jax.model.layout import convert_state, unrolled_shapes
from mylm_jax.model.params import param_shapes
from mylm_jax.ownership import MARKER, listing, refusal, remove, write_marker
from mylm_jax.parallel import make_mesh
from mylm_jax.tokenizer import Tokenizer
from mylm_jax.train.checkpoint import Checkpointer, UnreadableCheckpoint
from mylm_jax.train.lock import RunLock
from mylm_jax.train.run_files import REWRITTEN, RUN_FILES, Survey, deleted, survey
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
    if (old.optim.grad_clip > 0) != (cfg.optim.grad_clip > 0):
        # Clipping is a stage of its own in the optimizer chain (optim/build.py): on or off
        # is another state tree. Its threshold may change; a very large one clips nothing.
        raise ConfigError(f"the checkpoint (step {step}) was trained with optim.grad_clip={old.optim.grad_clip}; "
                          f"this config says {cfg.optim.grad_clip} (clipping on or off changes the optimizer's "
                          "state; to stop clipping, set a threshold that is never reached, e.g. 1e9)")
    if tokenizer is not None and meta.get("tokenizer"):
        then, now = meta["tokenizer"]["fingerprint"], tokenizer["fingerprint"]
        if then != now:
            raise ConfigError(f"the checkpoint (step {step}) was trained with tokenizer {then[:12]}...; "
                              f"this run's data uses {now[:12]}... (token ids would change meaning)")
    return old


def data_fingerprint(source) -> str | None:
    """The fingerprint of a data source's dataset, for the checkpoints (None: not shards, e.g. SFT)."""
    return dataset_fingerprint(source.meta) if isinstance(source, ShardsSource) else None


def check_data(meta: dict, cfg: Config, fingerprint: str | None) -> None:
    """Refuse to continue a checkpoint on other data under the same data.path."""
    then = meta.get("data_fingerprint")
    if then is None or fingerprint is None or then == fingerprint or meta.get("data_path") != cfg.data.path:
        return  # an older checkpoint, SFT data, the same data, or another data.path (printed as a change)
    raise ConfigError(f"{cfg.data.path}: the dataset changed since checkpoint step {meta.get('step')} was written "
                      f"(fingerprint {then[:12]}... then, {fingerprint[:12]}... now); put it back, or to go on with "
                      f"the new data, move it to another directory and resume with data.path set to that")


def check_compatible(meta: dict, cfg: Config, new_shapes: dict, tokenizer: dict | None) -> list[str]:
    """Raise ConfigError on a structural mismatch; return (and print) the other changes."""
    return say_changes(check_structure(meta, cfg, new_shapes, tokenizer), cfg)


def say_changes(old: Config, cfg: Config) -> list[str]:
    changes = config_changes(old, cfg)
    if changes:
        print("continuing with changed settings: " + "; ".join(changes), flush=True)
    return changes


def _holds(path: Path, config: Config | None) -> bool:
    """Whether the YAML file at `path` is this config (read quietly: its notes were printed
    when the run loaded it)."""
    if config is None:
        return False
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return load_config(path) == config
    except ConfigError:
        return False


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


class RunDir:
    def __init__(self, path: str | Path, checkpointer: Checkpointer, lock: RunLock | None = None):
        self.path, self.checkpointer, self.lock = Path(path), checkpointer, lock
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
                     overwrite: bool, config: Config | None = None) -> RunDir:
        """The writable run directory of a training run, one run per directory, locked
        (train/lock.py) until `release` (the Trainer's end) or the process's end.

        resume:    continue the run there; refused when it has no committed checkpoint
        overwrite: start over; the earlier run's own files are removed first (and named),
                   anything else there is left (and named)
        neither:   a new run; refused where an earlier run left checkpoints or logs, which
                   would otherwise mix with this one's (old steps kept as "latest", old
                   metrics.jsonl appended to)
        A directory MyLM did not make is refused wherever a run would delete or overwrite a
        file of it (run_files.py), except a config.yaml that holds this very run's `config`
        (the file given as --config, say): rewriting it loses no setting. Checked before
        anything is written, so a refused start leaves the directory as it was; checked
        again once the lock is held, since another run may have started in between.
        """
        path = Path(path)
        if resume and overwrite:
            raise ConfigError("--resume continues the run in train.out_dir, --overwrite deletes it: use one")
        cls._check(path, resume, overwrite, config)
        lock = None
        if jax.process_index() == 0:
            path.mkdir(parents=True, exist_ok=True)
            lock = RunLock(path).acquire()
            try:
                cls._claim(path, resume, overwrite, config)
            except BaseException:
                lock.release()
                raise
        if overwrite and jax.process_count() > 1:  # no process may see the old steps once another has cleared them
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("mylm-overwrite")
        return cls(path, Checkpointer(path, keep, async_save), lock)

    @classmethod
    def _claim(cls, path: Path, resume: bool, overwrite: bool, config: Config | None) -> None:
        """Under the lock: check again, clear an earlier run's own files for --overwrite (saying
        exactly what went and what stayed), mark the directory."""
        s = cls._check(path, resume, overwrite, config)
        if overwrite and s.ours and (s.leftovers or s.rewritten):
            remove(s.leftovers + s.rewritten)
            for name in ("checkpoints", "tb"):  # emptied: gone, as after a run that never was
                if (path / name).is_dir() and not any((path / name).iterdir()):
                    (path / name).rmdir()
            left = f"; left {listing(s.foreign)} (not made by MyLM)" if s.foreign else ""
            print(f"deleted the earlier run's {deleted(s)} in {path}{left}", flush=True)
        if overwrite or not (path / MARKER).is_file():
            write_marker(path, "run")

    @classmethod
    def _check(cls, path: Path, resume: bool, overwrite: bool, config: Config | None) -> Survey:
        """for_training's refusals; the survey they were made on."""
        s = survey(path)
        at_risk = [p for p in s.rewritten if not (p.name == "config.yaml" and _holds(p, config))]
        if not s.ours and (s.foreign or at_risk):
            first = (s.foreign + at_risk)[0]
            if overwrite:
                raise refusal(first, "overwrite" if first.name in REWRITTEN else "delete",
                              "--overwrite removes only what a MyLM run made")
            if not resume:
                raise refusal(first, "write a run over" if first.name in REWRITTEN else "write a run beside",
                              "train.out_dir must be a new directory or a MyLM run's")
        if resume and not s.steps:
            hint = ("start it again with --overwrite" if s.leftovers else "drop --resume to start a new run")
            if not s.ours and s.foreign:
                hint = f"{path} is not a MyLM run"
            raise ConfigError(f"--resume: no checkpoint in {path / 'checkpoints'}; {hint}")
        if s.leftovers and not resume and not overwrite:
            kinds = [name for name in RUN_FILES if any(p == path / name or p.parent == path / name
                                                       for p in s.leftovers)]
            raise ConfigError(f"{path} already holds a run ({', '.join(kinds)}); add --resume to "
                              "continue it or --overwrite to delete it and start again")
        return s

    def release(self) -> None:
        """Let another run write here (the Trainer's end)."""
        if self.lock is not None:
            self.lock.release()

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
                check: bool = True, data: str | None = None) -> tuple[TrainState, dict]:
        """(TrainState on `mesh`, data iterator state) of a checkpoint, built for `cfg`;
        step None: the newest one that reads whole (see the module's docstring).

        check: refuse structural changes against the checkpoint's own config (and its
        tokenizer, given this run's `identity`; and its dataset, given this run's dataset
        fingerprint `data`), print the others.
        """
        template, target = restore_target(cfg, mesh)
        candidates = self._candidates(step)
        for i, s in enumerate(candidates):
            try:
                meta = self.meta(s)
                old = check_structure(meta, cfg, template.param_shapes, identity) if check else None
                if check:
                    check_data(meta, cfg, data)
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
