"""The studies at tiny sizes on CPU: each writes its JSON fields and non-empty figures.

What the figures look like is not checked; the numbers' meaning is (e.g. the framework
comparison's loss difference is small, the search resumes from its SQLite file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mylm_jax.config import config_from_dict
from tests.train_helpers import ROOT, make_dataset, run_mylm, tiny_config


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory.mktemp("studies_data"))


@pytest.fixture(scope="module")
def moe_run(data_path, tmp_path_factory) -> Path:
    from mylm_jax.train.loop import pretrain
    out = tmp_path_factory.mktemp("moe_run") / "run"
    cfg = tiny_config(data_path, out, model=dict(n_experts=4, top_k=2), train=dict(checkpoint_every=0))
    pretrain(config_from_dict(cfg))
    return out


def assert_figures(paths):
    for path in paths:
        assert Path(path).is_file() and Path(path).stat().st_size > 1000, path


def test_plot_writes_every_figure(moe_run, tmp_path):
    result = run_mylm(["plot", str(moe_run), str(moe_run), "--out", str(tmp_path), "--x", "tokens"])
    assert result.returncode == 0, result.stderr
    names = {Path(p).name for p in result.stdout.split()}
    assert {"loss.png", "val_loss.png", "lr.png", "grad_norm.png", "tokens_per_s.png",
            "expert_load_run.png"} <= names
    assert_figures(tmp_path / n for n in names)


def test_plot_reads_tensorboard_only_runs(moe_run, tmp_path):
    from mylm_jax.studies.plot import load_run, plot_runs
    import shutil
    tb_only = tmp_path / "tb_only"
    shutil.copytree(moe_run / "tb", tb_only / "tb")
    records, _ = load_run(str(tb_only))
    jsonl = [json.loads(line) for line in (moe_run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in jsonl if "loss" in r}
    assert {r["step"]: r["loss"] for r in records if "loss" in r} == pytest.approx(losses, rel=1e-6)
    assert any("expert_load" in r for r in records)
    assert_figures(plot_runs([str(tb_only)], tmp_path / "plots"))


def test_plot_bad_input_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for run_dir, message in ((tmp_path / "missing", "no such run directory"),
                             (tmp_path / "empty", "no metrics.jsonl")):
        result = run_mylm(["plot", str(run_dir)])
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


TINY = ["--d-model", "32", "--layers", "2", "--batch", "2", "--seq-len", "32", "--vocab", "300",
        "--max-chars", "20000"]


def run_script(name: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "scripts" / name), *args, "--cache", str(tmp_path / "cache"),
           "--out", str(tmp_path / "out")]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)


def test_compare_frameworks(tmp_path):
    result = run_script("compare_frameworks.py", ["--steps", "4", *TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(r["jax"]["losses"]) == len(r["torch"]["losses"]) == 4
    assert r["max_loss_diff"] < 1e-4 and r["final_loss_diff"] <= r["max_loss_diff"]
    assert r["jax"]["tokens_per_s"] > 0 and r["torch"]["tokens_per_s"] > 0 and r["tokens_per_s_ratio"] > 0
    assert {"peak_mb", "how"} <= set(r["jax"]["memory"]) and {"peak_mb", "how"} <= set(r["torch"]["memory"])
    assert_figures([tmp_path / "out" / "frameworks_loss.png"])
    assert "max |loss_jax - loss_torch|" in (tmp_path / "out" / "report.md").read_text()
    # The noise floor: each framework against itself from weights one ulp away: a rounding-
    # sized difference (over 4 tiny steps it can still be below the float32 loss's own ulp: 0).
    for fw in ("jax", "torch"):
        floor = r[f"noise_floor_{fw}"]
        assert len(floor["per_step"]) == 4 and 0 <= floor["final"] <= floor["max"] < 1e-4
    assert "noise floor" in (tmp_path / "out" / "report.md").read_text()


def test_compare_variants(tmp_path):
    result = run_script("compare_variants.py", ["--variants", "gpt2", "moe", "--optimizers", "muon",
                                                "--repeat", "gpt2/muon", "--steps", "4", "--eval-every", "2",
                                                *TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [run["name"] for run in r["runs"]] == ["gpt2-muon-seed0", "moe-muon-seed0", "gpt2-muon-seed1"]
    moe = r["runs"][1]
    assert moe["active_matmul_params"] < moe["params"] and len(moe["val_loss"]) == 2
    assert r["seed_noise"] >= 0 and r["best"] in {run["name"] for run in r["runs"]}
    assert_figures([tmp_path / "out" / "variants_val_loss.png"])


@pytest.mark.parametrize("script, args, message", [
    ("compare_frameworks.py", ["--variant", "transformerxl"], "unknown variant 'transformerxl'"),
    ("compare_variants.py", ["--variants", "gpt2", "rnn"], "unknown variant 'rnn'"),
    ("init_study.py", ["--schemes", "orthogonal"], "unknown init scheme 'orthogonal'"),
])
def test_scripts_bad_input_is_one_line(script, args, message, tmp_path):
    result = run_script(script, args, tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_init_study(tmp_path):
    result = run_script("init_study.py", ["--schemes", "gpt2_scaled", "zero_out", "--steps", "3", "--probe-steps",
                                          "2", *TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(r["schemes"]) == {"gpt2_scaled", "zero_out"}
    for s in r["schemes"].values():
        assert len(s["losses"]) == 3 and len(s["act_rms_step1"]) == len(s["grad_rms_probe"]) == 2
    zero = r["schemes"]["zero_out"]["act_rms_step1"]
    assert zero[0] == pytest.approx(zero[1])  # every block starts as the identity
    assert_figures([tmp_path / "out" / "weight_initialization_comparison.png"])

    # The same study on a scanned stack (model.scan_layers): the same per-layer profiles.
    (tmp_path / "scanned").mkdir()
    scanned = run_script("init_study.py", ["--schemes", "gpt2_scaled", "--steps", "3", "--probe-steps", "2",
                                           *TINY, "model.scan_layers=true"], tmp_path / "scanned")
    assert scanned.returncode == 0, scanned.stderr
    s = json.loads((tmp_path / "scanned" / "out" / "results.json").read_text())["schemes"]["gpt2_scaled"]
    for key in ("losses", "act_rms_step1", "grad_rms_probe"):
        assert s[key] == pytest.approx(r["schemes"]["gpt2_scaled"][key], rel=1e-4), key


def test_search_resumes_and_writes_results(data_path, tmp_path):
    pytest.importorskip("optuna")
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\noptim.warmup_steps: {low: 0, high: 2, type: int}\n")
    cfg = tiny_config(data_path, tmp_path / "unused", train=dict(steps=4, eval_every=2))
    out = tmp_path / "search"
    args = ["search", "--space", str(space), "--out", str(out)]
    first = run_mylm([*args, "--trials", "2"], cfg, tmp_path / "cfg.yaml")
    assert first.returncode == 0, first.stderr
    second = run_mylm([*args, "--trials", "3"], cfg, tmp_path / "cfg.yaml")  # resumes: one more trial
    assert second.returncode == 0, second.stderr
    assert "resuming search: 2 trial(s) already finished" in second.stdout
    trials = json.loads((out / "search_results.json").read_text())["trials"]
    assert len(trials) == 3 and all(len(t["intermediate"]) >= 1 for t in trials)
    best = json.loads((out / "best_params.json").read_text())
    assert set(best["params"]) == {"optim.lr", "optim.warmup_steps"} and best["value"] > 0
    assert_figures([out / "optimization_history.png", out / "param_importances.png"])


@pytest.mark.parametrize("space, message", [
    ("optim.lr: {low: 1.0e-2, high: 1.0e-3}", "invalid range, low=0.01 must be < high=0.001"),
    ("optim.lr: {low: 0.0, high: 1.0, log: true}", "a log range needs low > 0"),
    ("optim.learning_rate: {low: 0.1, high: 1.0}", "optim.learning_rate"),
])
def test_search_bad_space_is_one_line(space, message, tmp_path):
    pytest.importorskip("optuna")
    (tmp_path / "space.yaml").write_text(space + "\n")
    result = run_mylm(["search", "--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "s")])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
