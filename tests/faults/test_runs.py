"""Run directories under faults and mistakes: a damaged checkpoint, a refused resume, a
second run in the same directory, structural set-config, a closed pipe, kill -9 and the logs.

One 8-step run (checkpoints 4 and 8) is made once; each test works on a copy of it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from mylm_jax.cli import main
from tests.train_helpers import ROOT, TEXT, make_dataset, run_mylm, steps_kept, tiny_config


def records(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def train_records(out_dir) -> list[tuple]:
    """(step, loss, loss_ema) of every training record, in file order."""
    return [(r["step"], r["loss"], r["loss_ema"]) for r in records(out_dir) if "loss" in r]


def write_config(path, cfg: dict) -> str:
    import yaml
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


# --- item 2: a damaged checkpoint ----------------------------------------------------------

def test_unreadable_meta_falls_back_in_show_and_generate(run, capsys):
    truncate(run / "checkpoints" / "8" / "meta" / "metadata")
    assert main(["checkpoint", "show", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "step 4: data" in out and "checkpoint step 8 in" in err and "falling back to step 4" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["generate", "--checkpoint", str(run), "--max-new-tokens", "3", "--temperature", "0"]) == 0
    assert "falling back to step 4" in capsys.readouterr().err
    # asked for by number, a damaged step is an error, not a fallback
    assert main(["checkpoint", "show", str(run), "--step", "8"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith("mylm: error: checkpoint step 8 in ")


def test_unreadable_arrays_fall_back_and_resume_sets_them_aside(run, base, capsys):
    arrays = max((run / "checkpoints" / "8" / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
    truncate(arrays)
    assert main(["generate", "--checkpoint", str(run), "--max-new-tokens", "3", "--temperature", "0"]) == 0
    assert "checkpoint step 8 in" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(run), "--step", "8", "--max-new-tokens", "3"]) == 2
    assert "is unreadable" in one_error_line(capsys.readouterr().err)
    cfg = tiny_config("unused", run)
    cfg["data"]["path"] = json.loads((run / "checkpoints" / "4" / "meta" / "metadata").read_text())["data_path"]
    resumed = run_mylm(["pretrain", "--resume"], cfg, run.parent / "c.yaml")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "/checkpoints/4" in resumed.stdout and "moved the unreadable step 8" in resumed.stderr
    assert steps_kept(run) == [4, 8] and (run / "checkpoints" / "8.unreadable").is_dir()
    assert train_records(run) == train_records(base)  # steps 5-8 redone: the same numbers, once each


# --- item 3: a refused resume writes nothing ----------------------------------------------------

def test_refused_resume_leaves_tokenizer_and_config(run, tmp_path):
    from mylm_jax.tokenizer import train_tokenizer

    other = make_dataset(tmp_path / "other", train_tokenizer([TEXT[::-1] * 5], vocab_size=300, progress=False))
    before = {name: (run / name).read_bytes() for name in ("tokenizer.json", "config.yaml")}
    cfg = tiny_config(other, run)
    result = run_mylm(["pretrain", "--resume"], cfg, tmp_path / "c.yaml")
    assert result.returncode == 2
    assert "was trained with tokenizer" in one_error_line(result.stderr)
    assert {name: (run / name).read_bytes() for name in before} == before


# --- item 9: one run per directory ----------------------------------------------------------

def test_a_new_run_in_an_old_runs_directory_is_refused_or_overwritten(run, data_path, tmp_path, capsys):
    metrics = (run / "metrics.jsonl").read_bytes()
    config = write_config(tmp_path / "c.yaml", tiny_config(data_path, run, train=dict(steps=5)))
    assert main(["pretrain", "--config", config]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert steps_kept(run) == [4, 8] and (run / "metrics.jsonl").read_bytes() == metrics
    assert main(["pretrain", "--config", config, "--resume", "--overwrite"]) == 2
    capsys.readouterr()
    assert main(["pretrain", "--config", config, "--overwrite"]) == 0
    assert (f"deleted the earlier run's checkpoints (steps 4, 8), metrics.jsonl, tb (1 event file), config.yaml, "
            f"tokenizer.json in {run}\n") in capsys.readouterr().out
    assert steps_kept(run) == [4, 5]
    assert [r[0] for r in train_records(run)] == [1, 2, 3, 4, 5]


def test_resume_without_a_checkpoint_is_refused(data_path, tmp_path, capsys):
    typo = tmp_path / "runz"
    config = write_config(tmp_path / "c.yaml", tiny_config(data_path, typo))
    assert main(["pretrain", "--config", config, "--resume"]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert f"no checkpoint in {typo / 'checkpoints'}; drop --resume" in err
    assert not typo.exists()  # nothing created on the way


def test_sft_follows_the_same_rules(run, tmp_path, capsys):
    conversation = json.dumps({"instruction": "Speak", "input": "", "output": "Speak, speak."})
    (tmp_path / "sft.jsonl").write_text((conversation + "\n") * 16)
    cfg = {"sft": dict(data=[str(tmp_path / "sft.jsonl")], init_from=str(run), extend_vocab=True),
           "data": dict(seq_len=32), "optim": dict(warmup_steps=1),
           "train": dict(steps=2, batch_size=4, out_dir=str(run))}
    config = write_config(tmp_path / "sft.yaml", cfg)
    assert main(["sft", "--config", config]) == 2  # out_dir holds the pretraining run
    assert "already holds a run" in one_error_line(capsys.readouterr().err)
    config = write_config(tmp_path / "sft2.yaml", {**cfg, "train": dict(steps=2, batch_size=4, out_dir=str(tmp_path / "nope"))})
    assert main(["sft", "--config", config, "--resume"]) == 2
    assert "no checkpoint in" in one_error_line(capsys.readouterr().err)


# --- item 12: set-config and a closed pipe --------------------------------------------------------

def test_set_config_refuses_structural_changes(run, capsys):
    meta = (run / "checkpoints" / "8" / "meta" / "metadata").read_bytes()
    assert main(["checkpoint", "set-config", str(run), "model.d_model=64"]) == 2
    assert "does not fit this model: parameter" in one_error_line(capsys.readouterr().err)
    assert main(["checkpoint", "set-config", str(run), "optim.name=muon"]) == 2
    assert "optimizer states differ" in one_error_line(capsys.readouterr().err)
    assert (run / "checkpoints" / "8" / "meta" / "metadata").read_bytes() == meta
    assert main(["checkpoint", "set-config", str(run), "optim.lr=1e-3"]) == 0


def test_a_closed_pipe_ends_quietly(base):
    # The reader closes its end at once, before the command writes anything (as `| head` does once satisfied).
    proc = subprocess.Popen([sys.executable, "-m", "mylm_jax.cli", "checkpoint", "show", str(base)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# --- item 13: kill -9, then exact logs ------------------------------------------------------------

def test_kill_9_resume_logs_each_step_once_with_the_same_smoothed_loss(base, data_path, tmp_path):
    cfg = tiny_config(data_path, tmp_path / "run")
    killed = run_mylm(["pretrain"], cfg, tmp_path / "c.yaml", env={"MYLM_TEST_KILL_AT_STEP": "6"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_mylm(["pretrain", "--resume"], cfg, tmp_path / "c.yaml")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert train_records(tmp_path / "run") == train_records(base)  # bit for bit, loss_ema included
    assert [r["step"] for r in records(tmp_path / "run") if "val_loss" in r] == [4, 8]


def test_drop_records_after_keeps_earlier_steps_and_drops_a_torn_line(tmp_path):
    from mylm_jax.train.metrics import drop_records_after

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "val_loss": 1.0}\n{"step": 3}\n{"step": 2')
    assert drop_records_after(path, 2) == 2
    assert path.read_text() == '{"step": 1}\n{"step": 2, "val_loss": 1.0}\n'
