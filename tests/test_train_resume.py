"""Pretraining end to end in subprocesses: exact resume after kill -9, a crash during an
async save, SIGTERM, non-finite losses, continuing with changed settings, checkpoint commands."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.train_helpers import ROOT, losses, run_mylm, tiny_config


@pytest.fixture(scope="module")
def straight(data_path, tmp_path_factory):
    """8 steps in one go: the reference trajectory."""
    out = tmp_path_factory.mktemp("straight")
    result = run_mylm(["pretrain"], tiny_config(data_path, out), out / "config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, losses(out)


def test_straight_run_logs_learns_and_checkpoints(straight):
    out, by_step = straight
    assert sorted(by_step) == list(range(1, 9)) and by_step[8] < by_step[1]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8] and all({"val_ppl", "val_bpb"} <= set(r) for r in evals)
    train = [r for r in records if "loss" in r]
    assert {"loss_ema", "lr", "grad_norm", "tokens_per_s", "step_time_s"} <= set(train[-1])
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8]
    assert list((out / "tb").iterdir())  # TensorBoard event files


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_steps_per_call_changes_no_number(straight, data_path, tmp_path, steps_per_call):
    """The straight run does 8 steps as 2 calls of 4 (the default K=10, cut at the evaluation
    and checkpoint every 4 steps); K=1 and K=3 (calls of 3, 1, 3, 1) log every step, evaluate
    and checkpoint at the same steps, and give the same losses bit for bit."""
    cfg = tiny_config(data_path, tmp_path, train={"steps_per_call": steps_per_call})
    result = run_mylm(["pretrain"], cfg, tmp_path / "c.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(tmp_path) == straight[1]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [4, 8]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8]


def test_kill_9_then_resume_gives_identical_losses(straight, data_path, tmp_path):
    cfg = tiny_config(data_path, tmp_path)
    killed = run_mylm(["pretrain"], cfg, tmp_path / "c.yaml", env={"MYLM_TEST_KILL_AT_STEP": "6"})
    assert killed.returncode == -signal.SIGKILL
    assert max(losses(tmp_path)) == 6  # steps 5 and 6 ran after the last checkpoint (4): lost, redone
    resumed = run_mylm(["pretrain", "--resume"], cfg, tmp_path / "c.yaml")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path) == straight[1]  # bit for bit, every step


def test_kill_during_async_save_keeps_the_previous_checkpoint(straight, data_path, tmp_path):
    cfg = tiny_config(data_path, tmp_path)
    killed = run_mylm(["pretrain"], cfg, tmp_path / "c.yaml", env={"MYLM_TEST_KILL_DURING_SAVE": "8"})
    assert killed.returncode == -signal.SIGKILL
    names = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert "4" in names and "8" not in names  # step 8's save never committed
    resumed = run_mylm(["pretrain", "--resume"], cfg, tmp_path / "c.yaml")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "/checkpoints/4" in resumed.stdout
    assert losses(tmp_path) == straight[1]


def test_sigterm_saves_and_exits_0(data_path, tmp_path):
    cfg = tiny_config(data_path, tmp_path, train=dict(steps=100000, checkpoint_every=0, eval_every=0))
    (tmp_path / "c.yaml").write_text(__import__("yaml").safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "mylm_jax.cli", "pretrain", "--config", str(tmp_path / "c.yaml")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 240
    while time.time() < deadline and not ((tmp_path / "metrics.jsonl").exists() and
                                          len((tmp_path / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert "SIGTERM: saved step" in stdout
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and saved[0] >= 3


@pytest.mark.parametrize("policy", ["halt", "skip"])
def test_non_finite_loss(data_path, tmp_path, policy):
    # lr 1e9: the first update throws the weights to ~1e9, the next losses overflow.
    cfg = tiny_config(data_path, tmp_path, optim=dict(lr=1e9, warmup_steps=0, grad_clip=0.0),
                      train=dict(on_nonfinite=policy, steps=6, eval_every=0, checkpoint_every=0))
    result = run_mylm(["pretrain"], cfg, tmp_path / "c.yaml")
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    bad = [r["step"] for r in records if r.get("skipped_nonfinite")]
    assert bad
    if policy == "halt":
        assert result.returncode == 3 and f"non-finite loss or gradient at step {bad[0]}" in result.stdout
        assert (tmp_path / "checkpoints").is_dir()
    else:  # every step after the first skipped: the run goes to its end, then says so (exit 3)
        assert result.returncode == 3 and records[-1]["step"] == 6
        assert "steps 2 to 6 were all skipped" in result.stdout


def test_halt_right_after_a_checkpoint_and_sigterm_after_the_last_save(data_path, tmp_path):
    """Two ways to ask for a step that is already on disk, each once a traceback (orbax refuses
    to write a step twice): a halting NaN right after a checkpoint (the state is the
    checkpointed one), and SIGTERM arriving after the run's final save."""
    cfg = tiny_config(data_path, tmp_path, optim=dict(lr=1e9, warmup_steps=0, grad_clip=0.0),
                      train=dict(on_nonfinite="halt", steps=6, eval_every=0, checkpoint_every=1))
    result = run_mylm(["pretrain"], cfg, tmp_path / "c.yaml")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "non-finite loss or gradient at step" in result.stdout
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    halted_at = min(r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
                    if r.get("skipped_nonfinite"))
    assert saved[-1] == halted_at - 1  # the last good step, saved once

    from mylm_jax.config import config_from_dict
    from mylm_jax.data.sources import ShardsSource
    from mylm_jax.train.loop import Trainer
    cfg = config_from_dict(tiny_config(data_path, tmp_path / "again", train=dict(steps=2, eval_every=0)))
    trainer = Trainer(cfg, ShardsSource(cfg), quiet=True)
    assert trainer.run() == 2
    trainer.save(wait=True)  # what the stop path does when SIGTERM lands after the final save
    assert sorted(p.name for p in (tmp_path / "again" / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]


def test_continue_with_changed_settings_and_structural_errors(straight, data_path, tmp_path):
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(straight[0], run_dir)
    more = run_mylm(["pretrain", "--continue", str(run_dir), "train.steps=10", "optim.lr=1e-3"])
    assert more.returncode == 0, more.stderr[-3000:]
    assert "optim.lr: 0.003 -> 0.001" in more.stdout and "train.steps: 8 -> 10" in more.stdout
    assert max(losses(run_dir)) == 10
    bad = run_mylm(["pretrain", "--continue", str(run_dir), "train.steps=12", "model.d_model=64"])
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("mylm: error: the checkpoint (step 10) does not fit this model: "
                                         "parameter 'blocks.0.attn.kv.kernel'")
    assert run_mylm(["pretrain", "--continue", str(run_dir), "optim.name=muon"]).returncode == 2
    shown = run_mylm(["checkpoint", "show", str(run_dir)])
    assert shown.returncode == 0 and "latest 10" in shown.stdout and "lr: 0.001" in shown.stdout
    assert run_mylm(["checkpoint", "set-config", str(run_dir), "optim.lr=5e-4"]).returncode == 0
    assert "lr: 0.0005" in run_mylm(["checkpoint", "show", str(run_dir)]).stdout
    assert run_mylm(["checkpoint", "set-config", str(run_dir), "optim.nope=1"]).returncode == 2
    assert run_mylm(["checkpoint", "show", str(tmp_path)]).returncode == 2
