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
from pathlib import Path

from flax import nnx

from mylm_jax.config import Config, ConfigError, MeshConfig, apply_overrides, config_from_dict, config_to_dict
from mylm_jax.model.gpt import GPT
from mylm_jax.model.params import param_shapes
from mylm_jax.parallel import make_mesh
from mylm_jax.tokenizer import Tokenizer
from mylm_jax.train.checkpoint import Checkpointer
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


def check_compatible(meta: dict, cfg: Config, new_shapes: dict, tokenizer: dict | None) -> list[str]:
    """Raise ConfigError on a structural mismatch; return (and print) the other changes.

    new_shapes: this run's parameter shapes (from the abstract state it builds anyway).
    """
    old = config_from_dict(meta["config"])
    step = meta.get("step")
    old_shapes = param_shapes(nnx.eval_shape(lambda: GPT(old.model, nnx.Rngs(0))))
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
    changes = config_changes(old, cfg)
    if changes:
        print("continuing with changed settings: " + "; ".join(changes), flush=True)
    return changes


class RunDir:
    def __init__(self, path: str | Path, checkpointer: Checkpointer):
        self.path, self.checkpointer = Path(path), checkpointer

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run with at least one committed checkpoint (read-only)."""
        if not (Path(path) / "checkpoints").is_dir():
            raise ConfigError(f"{path}: no checkpoints/ directory (not a run directory?)")
        run = cls(path, Checkpointer(path, read_only=True))
        if run.latest_step is None:
            raise ConfigError(f"{path}: no committed checkpoint")
        return run

    # --- what is there ------------------------------------------------------------------

    @property
    def steps(self) -> list[int]:
        return self.checkpointer.all_steps()

    @property
    def latest_step(self) -> int | None:
        return self.checkpointer.latest_step()

    def step(self, step: int | None = None) -> int:
        """`step`, or the latest when None; a one-line error when the run does not keep it."""
        chosen = self.latest_step if step is None else step
        if chosen is None or chosen not in self.steps:
            raise ConfigError(f"{self.path}: no checkpoint at step {chosen} (kept: {self.steps})")
        return chosen

    def meta(self, step: int | None = None) -> dict:
        """{"config", "tokenizer", "step", "seed", "data_path"} of a checkpoint."""
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
        (what `mylm pretrain --continue` starts from); validated first. Returns the step."""
        step = self.step()
        meta = self.meta(step)
        meta["config"] = config_to_dict(config_from_dict(apply_overrides(meta["config"], overrides)))
        self.checkpointer.rewrite_meta(step, meta)
        return step

    # --- restoring ------------------------------------------------------------------------

    def restore(self, step: int, cfg: Config, mesh, identity: dict | None = None,
                check: bool = True) -> tuple[TrainState, dict]:
        """(TrainState on `mesh`, data iterator state) of a checkpoint, built for `cfg`.

        check: refuse structural changes against the checkpoint's own config (and its
        tokenizer, given this run's `identity`), print the others.
        """
        template, target = restore_target(cfg, mesh)
        if check:
            check_compatible(self.meta(step), cfg, template.param_shapes, identity)
        state, data_state, _ = self.checkpointer.restore(step, target)
        template.state = state
        return template, data_state

    def load_model(self, step: int | None = None):
        """(model, config, tokenizer) of a checkpoint, on one device: for generation and scoring."""
        step = self.step(step)
        cfg = dataclasses.replace(self.config(step), mesh=MeshConfig(data=1))
        ts, _ = self.restore(step, cfg, make_mesh(cfg.mesh), check=False)
        model, _ = ts.models()
        return model, cfg, self.tokenizer(step)
