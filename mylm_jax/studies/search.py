"""`mylm search --config CONFIG --space space.yaml`: hyperparameter search with Optuna.

    mylm search --config configs/quickstart.yaml --space configs/search/space.yaml \\
        --trials 20 --out runs/search train.steps=200

Each trial trains the config with the sampled values (pretrain's own loop) and scores the
last validation loss. Pieces, and why:

  * SQLite storage (OUT/search.db, one study per --name): every finished trial is on disk,
    so rerunning the same command after an interruption resumes where it stopped (trials
    that were running when it died are marked failed and not counted);
  * pruning: every eval reports its val loss to Optuna; a trial whose val loss is worse
    than the median of earlier trials at the same step is stopped (MedianPruner), so
    hopeless settings cost a fraction of a run;
  * TPE sampling (seeded): later trials concentrate where earlier ones scored well.

The space is YAML, one config key per entry:

    optim.lr:           {low: 1.0e-4, high: 1.0e-2, log: true}
    optim.weight_decay: {low: 0.0, high: 0.2}
    optim.warmup_steps: {low: 0, high: 50, type: int}
    train.batch_size:   {choices: [4, 8, 16]}

Writes OUT/best_params.json, OUT/search_results.json (every trial, its values and
intermediate val losses), optimization_history.png and param_importances.png.
Optuna is an optional extra: `pip install -e ".[search]"`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from mylm_jax.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, load_config
from mylm_jax.studies.results import figure, save_figure
from mylm_jax.studies.script import StudyError


def load_space(path: str, base: dict) -> dict[str, dict]:
    """The search space, validated: every key a config key, every range non-empty."""
    if not Path(path).is_file():
        raise StudyError(f"{path}: no such search space file")
    try:
        space = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise StudyError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(space, dict) or not space:
        raise StudyError(f"{path}: expected a mapping of config keys to ranges, e.g. 'optim.lr: {{low: 1e-4, high: 1e-2}}'")
    for key, spec in space.items():
        where = f"{path}: {key}"
        if not isinstance(spec, dict):
            raise StudyError(f"{where}: expected {{low, high[, log, type]}} or {{choices: [...]}}")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise StudyError(f"{where}: choices must be a non-empty list")
            probe = spec["choices"][0]
        else:
            low, high = spec.get("low"), spec.get("high")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
                raise StudyError(f"{where}: low and high must be numbers, got low={low!r} high={high!r}")
            if not low < high:
                raise StudyError(f"{where}: invalid range, low={low} must be < high={high}")
            if spec.get("log") and low <= 0:
                raise StudyError(f"{where}: a log range needs low > 0, got {low}")
            if spec.get("type", "float") not in ("float", "int"):
                raise StudyError(f"{where}: type must be float or int, got {spec['type']!r}")
            unknown = set(spec) - {"low", "high", "log", "type"}
            if unknown:
                raise StudyError(f"{where}: unknown field(s) {sorted(unknown)}")
            probe = low
        try:
            config_from_dict(apply_overrides(base, [f"{key}={json.dumps(probe)}"]))
        except ConfigError as e:
            raise StudyError(f"{where}: {e}") from None
    return space


def suggest(trial, space: dict) -> dict:
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec.get("type") == "int":
            values[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return values


def make_objective(base: dict, space: dict, out: Path):
    import optuna

    from mylm_jax.data.sources import ShardsSource
    from mylm_jax.train.loop import Trainer

    def objective(trial) -> float:
        values = suggest(trial, space)
        overrides = [f"{k}={json.dumps(v)}" for k, v in values.items()]
        overrides.append(f"train.out_dir={out / f'trial_{trial.number:04d}'}")
        cfg = config_from_dict(apply_overrides(base, overrides))
        last_val = math.inf

        def report(step: int, result: dict) -> None:
            """Each eval's val loss goes to Optuna; a pruned trial stops the run here."""
            nonlocal last_val
            last_val = result["val_loss"]
            trial.report(last_val, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val loss {last_val:.4f} at step {step}")

        # overwrite: a trial directory left by an interrupted or another search is replaced. Only a
        # MyLM run is (RunDir.for_training): a directory of the user's under that name is refused.
        Trainer(cfg, ShardsSource(cfg), on_eval=report, overwrite=True).run()
        if not math.isfinite(last_val):
            raise StudyError("the config runs no eval (train.eval_every=0 or no val split): nothing to score")
        return last_val

    return objective


def write_outputs(study, out: Path) -> dict:
    from optuna.trial import TrialState

    trials = [{"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
               "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())}}
              for t in study.trials]
    (out / "search_results.json").write_text(json.dumps({"study": study.study_name, "trials": trials}, indent=2))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        b = study.best_trial
        best = {"value": b.value, "params": b.params, "trial": b.number,
                "trials_complete": len(complete), "trials_pruned": sum(t["state"] == "PRUNED" for t in trials)}
        (out / "best_params.json").write_text(json.dumps(best, indent=2))

    fig, ax = figure(figsize=(7, 4))
    done = [t for t in trials if t["value"] is not None]
    if done:
        ax.plot([t["number"] for t in done], [t["value"] for t in done], "o", label="trial")
        best_so_far = [min(t["value"] for t in done[:i + 1]) for i in range(len(done))]
        ax.plot([t["number"] for t in done], best_so_far, "-", label="best so far")
    pruned = [t for t in trials if t["state"] == "PRUNED" and t["intermediate"]]
    ax.plot([t["number"] for t in pruned], [list(t["intermediate"].values())[-1] for t in pruned], "x",
            color="C3", label="pruned (last val loss)")
    ax.set(xlabel="trial", ylabel="val loss", title="optimisation history")
    ax.legend()
    save_figure(fig, out / "optimization_history.png")

    fig, ax = figure(figsize=(7, 4))
    try:
        import optuna
        importances = optuna.importance.get_param_importances(study)
        ax.barh(list(importances)[::-1], list(importances.values())[::-1])
        ax.set(xlabel="importance (fANOVA)", title="parameter importances")
    except (RuntimeError, ValueError) as e:  # too few complete trials, or no spread in the values
        ax.text(0.5, 0.5, f"importances unavailable:\n{e}", ha="center", va="center", wrap=True)
        ax.set_axis_off()
    save_figure(fig, out / "param_importances.png")
    return best or {}


def search(config: str | None, overrides: list[str], space_path: str, trials: int, out: str | Path,
           name: str = "search", seed: int = 0) -> dict:
    """Run (or resume) a search until `trials` trials have finished; returns the best
    {"value", "params", "trial", ...} ({} when none completed)."""
    try:
        import optuna
    except ImportError:
        raise StudyError("mylm search needs Optuna: pip install -e \".[search]\"") from None
    from optuna.trial import TrialState

    if trials < 1:
        raise StudyError(f"--trials must be >= 1, got {trials}")
    base = config_to_dict(load_config(config, overrides))
    base["train"].update(checkpoint_every=0, keep_checkpoints=1, async_checkpoint=False)
    space = load_space(space_path, base)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{out / 'search.db'}", load_if_exists=True,
                                direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for t in study.trials:  # left RUNNING by an interrupted search: failed, not counted
        if t.state == TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    if finished:
        print(f"resuming {name}: {finished} trial(s) already finished in {out / 'search.db'}")
    if trials > finished:
        study.optimize(make_objective(base, space, out), n_trials=trials - finished, catch=())
    return write_outputs(study, out)
