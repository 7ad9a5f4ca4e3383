"""No command deletes or replaces what is not its own; one writer per run directory; a
resume notices replaced data; an export replaces only an earlier export, and only whole.
(`data prepare`'s share, a dataset replaced only whole and workers that end with it, is in
tests/test_data_prepare.py.)

Each test names the promise it holds and checks the bytes of what must survive. One 8-step
run (checkpoints 4 and 8) is made once; the tests that need a run work on a copy of it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mylm_jax.cli import main
from mylm_jax.data.prepare import PrepareSettings, prepare
from mylm_jax.ownership import MARKER, read_marker
from mylm_jax.train.lock import RunLock
from tests.train_helpers import ROOT, TEXT, make_dataset, run_mylm, steps_kept, tiny_config


def snapshot(directory: Path) -> dict[str, str]:
    """path -> sha256 of every file below `directory`: what must come through unchanged."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def error_line(err: str) -> str:
    """The one `mylm: error:` line (a progress bar aside), asserting there is nothing else."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("prepare ")]
    assert len(lines) == 1 and lines[0].startswith("mylm: error: ") and "Traceback" not in err, err[-3000:]
    return lines[0]


def write_config(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


# --- markers -----------------------------------------------------------------------------


def test_every_command_marks_what_it_made(base, data_path, tmp_path):
    assert read_marker(base)["kind"] == "run" and "pretrain" in read_marker(base)["command"]
    assert read_marker(data_path)["kind"] == "dataset"
    assert main(["export", "hf", str(base), str(tmp_path / "hf")]) == 0
    record = read_marker(tmp_path / "hf")
    assert record["kind"] == "hf-export" and record["version"] and record["time"].endswith("Z")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_replace_dir_puts_the_new_directory_in_place_whole(tmp_path, monkeypatch, exchange):
    from mylm_jax.fileio import replace_dir

    if not exchange:  # a system without RENAME_EXCHANGE
        monkeypatch.setattr("mylm_jax.fileio._exchange", lambda a, b: False)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "x").write_text("new")
    assert replace_dir(tmp_path / "new", tmp_path / "target") is None  # nothing there before
    (tmp_path / "newer").mkdir()
    (tmp_path / "newer" / "x").write_text("newer")
    old = replace_dir(tmp_path / "newer", tmp_path / "target")
    assert (tmp_path / "target" / "x").read_text() == "newer" and (old / "x").read_text() == "new"


# --- run directories ---------------------------------------------------------------------


def test_overwrite_refuses_a_directory_mylm_did_not_make(data_path, tmp_path, capsys):
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "resnet_epoch90.pt").write_bytes(b"weights")
    (other / "tb").mkdir()
    (other / "tb" / "events.out.tfevents.1.host").write_bytes(b"events of another program")
    before = snapshot(other)
    config = write_config(tmp_path / "c.yaml", tiny_config(data_path, other))
    assert main(["pretrain", "--config", config, "--overwrite"]) == 2
    assert error_line(capsys.readouterr().err) == (
        f"mylm: error: {other}/checkpoints/resnet_epoch90.pt was not made by MyLM; refusing to delete it "
        "(--overwrite removes only what a MyLM run made)")
    assert snapshot(other) == before and sorted(p.name for p in other.iterdir()) == ["checkpoints", "tb"]
    assert main(["pretrain", "--config", config]) == 2  # nor a new run beside them
    assert "resnet_epoch90.pt was not made by MyLM; refusing to write a run beside it" in capsys.readouterr().err
    assert snapshot(other) == before


def test_a_new_run_never_overwrites_a_users_config_or_tokenizer(data_path, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own config\n")
    (mine / "tokenizer.json").write_text('{"my": "tokenizer"}')
    before = snapshot(mine)
    config = write_config(tmp_path / "c.yaml", tiny_config(data_path, mine))
    assert main(["pretrain", "--config", config]) == 2
    assert error_line(capsys.readouterr().err).startswith(
        f"mylm: error: {mine}/config.yaml was not made by MyLM; refusing to write a run over it")
    assert main(["pretrain", "--config", config, "--overwrite"]) == 2
    assert f"{mine}/config.yaml was not made by MyLM; refusing to overwrite it" in capsys.readouterr().err
    assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == ["config.yaml", "tokenizer.json"]


def test_the_config_file_given_may_live_in_the_new_runs_directory(data_path, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    config = write_config(out / "config.yaml", tiny_config(data_path, out, train=dict(steps=2, eval_every=0)))
    before = snapshot(out)
    assert main(["pretrain", "--config", config, "train.steps=3", "--quiet"]) == 2  # not the file's config
    assert f"{out}/config.yaml was not made by MyLM" in error_line(capsys.readouterr().err)
    assert snapshot(out) == before
    assert main(["pretrain", "--config", config, "--quiet"]) == 0  # the run's own config: rewriting loses nothing
    assert steps_kept(out) == [2] and read_marker(out)["kind"] == "run"


def test_overwrite_of_a_mylm_run_removes_only_its_own_files(run, data_path, tmp_path, capsys):
    (run / "checkpoints" / "notes.txt").write_text("why step 8 looked odd")
    (run / "README.md").write_text("my run")
    config = write_config(tmp_path / "c.yaml", tiny_config(data_path, run, train=dict(steps=2, eval_every=0,
                                                                                      checkpoint_every=2)))
    assert main(["pretrain", "--config", config, "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert (f"deleted the earlier run's checkpoints (steps 4, 8), metrics.jsonl, tb (1 event file), config.yaml, "
            f"tokenizer.json in {run}; left {run}/checkpoints/notes.txt (not made by MyLM)\n") in out
    assert "--overwrite:" not in out
    assert (run / "checkpoints" / "notes.txt").read_text() == "why step 8 looked odd"
    assert (run / "README.md").read_text() == "my run" and steps_kept(run) == [2]


def test_a_run_made_before_markers_is_still_recognised(run, data_path, tmp_path, capsys):
    (run / MARKER).unlink()  # as an older MyLM left it: committed MyLM steps, its metrics.jsonl
    config = write_config(tmp_path / "c.yaml", tiny_config(data_path, run, train=dict(steps=2, eval_every=0,
                                                                                      checkpoint_every=2)))
    assert main(["pretrain", "--config", config]) == 2
    assert "already holds a run (checkpoints, metrics.jsonl, tb)" in error_line(capsys.readouterr().err)
    assert main(["pretrain", "--config", config, "--overwrite"]) == 0
    assert "deleted the earlier run's checkpoints (steps 4, 8)" in capsys.readouterr().out
    assert steps_kept(run) == [2] and read_marker(run)["kind"] == "run"  # and marked from now on


def test_a_directory_of_another_kind_is_never_a_run(data_path, tmp_path, capsys):
    before = snapshot(Path(data_path))
    config = write_config(tmp_path / "c.yaml", tiny_config(data_path, Path(data_path)))
    assert main(["pretrain", "--config", config, "--overwrite"]) == 2
    assert error_line(capsys.readouterr().err).startswith(
        f"mylm: error: {data_path} is a MyLM dataset (its .mylm says so:")
    assert snapshot(Path(data_path)) == before


# --- one writer per run directory --------------------------------------------------------


def test_a_run_into_a_locked_directory_is_refused_naming_the_holder(run, data_path, tmp_path):
    lock = RunLock(run).acquire()  # this process holds it, as a running `mylm pretrain` would
    before = snapshot(run)
    try:
        cfg = tiny_config(data_path, run)
        for flags in (["--overwrite"], ["--resume"]):
            result = run_mylm(["pretrain", *flags], cfg, tmp_path / "c.yaml")
            assert result.returncode == 2
            line = error_line(result.stderr)
            assert line.startswith(f"mylm: error: {run} is in use by another run (pid {os.getpid()}: ")
            assert snapshot(run) == before  # nothing deleted, nothing written
    finally:
        lock.release()


def test_the_lock_is_held_for_the_trainers_life(data_path, tmp_path):
    from mylm_jax.config import ConfigError, config_from_dict
    from mylm_jax.data.sources import ShardsSource
    from mylm_jax.train.loop import Trainer

    cfg = config_from_dict(tiny_config(data_path, tmp_path / "run", train=dict(steps=2, eval_every=0)))
    trainer = Trainer(cfg, ShardsSource(cfg), quiet=True)
    with pytest.raises(ConfigError, match=f"is in use by another run \\(pid {os.getpid()}: "):
        RunLock(tmp_path / "run").acquire()
    trainer.run()
    RunLock(tmp_path / "run").acquire().release()  # free again once run() returned, the trainer still alive


def test_two_runs_started_together_into_one_directory_one_is_refused(data_path, tmp_path):
    out = tmp_path / "run"
    procs = []
    for steps in (6, 7):
        cfg = tiny_config(data_path, out, train=dict(steps=steps, eval_every=0, checkpoint_every=steps))
        path = Path(write_config(tmp_path / f"c{steps}.yaml", cfg))
        procs.append(subprocess.Popen([sys.executable, "-m", "mylm_jax.cli", "pretrain", "--config", str(path)],
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(p.returncode, err) for p in procs for _, err in [p.communicate(timeout=300)]]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    winner = (6, 7)[[rc for rc, _ in results].index(0)]
    loser = error_line(next(err for rc, err in results if rc == 2))
    assert "is in use by another run (pid " in loser or "already holds a run" in loser, loser
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, winner + 1))  # one run's records, each step once
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == winner
    assert steps_kept(out) == [winner]


# --- a resume notices replaced data --------------------------------------------------------


def test_a_resume_over_a_replaced_dataset_is_refused(tmp_path, capsys):
    from mylm_jax.data.shards import dataset_fingerprint, read_metadata

    data = Path(make_dataset(tmp_path / "d"))
    cfg = tiny_config(str(data), tmp_path / "run", train=dict(steps=4, eval_every=0, checkpoint_every=4))
    assert main(["pretrain", "--config", write_config(tmp_path / "c.yaml", cfg), "--quiet"]) == 0
    then = dataset_fingerprint(read_metadata(data))
    words = TEXT.split()[::-1]  # other documents, as many as before
    (tmp_path / "other.jsonl").write_text("".join(json.dumps({"text": " ".join(words[i % 20:i % 20 + 6 + i % 15])})
                                                  + "\n" for i in range(200)))
    prepare(PrepareSettings(inputs=(str(tmp_path / "other.jsonl"),), out_dir=str(data),
                            tokenizer=str(tmp_path / "d" / "tokenizer.json"), workers=1, overwrite=True),
            progress=False)
    now = dataset_fingerprint(read_metadata(data))
    run = tmp_path / "run"
    before = snapshot(run)
    cfg["train"]["steps"] = 8
    config = write_config(tmp_path / "c.yaml", cfg)
    assert main(["pretrain", "--config", config, "--resume", "--quiet"]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"mylm: error: {data}: the dataset changed since checkpoint step 4 was written "
                           f"(fingerprint {then[:12]}... then, {now[:12]}... now)")
    assert snapshot(run) == before
    # Another data.path is the explicit way on: the run goes on (and its lock was let go).
    shutil.move(data, tmp_path / "new_data")
    cfg["data"]["path"] = str(tmp_path / "new_data")
    assert main(["pretrain", "--config", write_config(tmp_path / "c.yaml", cfg), "--resume", "--quiet"]) == 0
    assert "data.path: " in capsys.readouterr().out and steps_kept(run) == [4, 8]


# --- Hugging Face exports --------------------------------------------------------------------


def test_export_checks_its_dependency_before_touching_an_earlier_export(base, tmp_path, monkeypatch, capsys):
    hf = tmp_path / "hf"
    assert main(["export", "hf", str(base), str(hf)]) == 0
    before = snapshot(hf)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # not installed
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    monkeypatch.setattr("mylm_jax.interop.export.RunDir.open", lambda *a: pytest.fail("read the run first"))
    capsys.readouterr()
    assert main(["export", "hf", str(base), str(hf), "--overwrite"]) == 2
    assert "needs the safetensors package" in error_line(capsys.readouterr().err)
    assert snapshot(hf) == before


def test_a_failed_export_leaves_the_earlier_one_whole(base, tmp_path, monkeypatch, capsys):
    hf = tmp_path / "hf"
    assert main(["export", "hf", str(base), str(hf)]) == 0
    (hf / "README.md").write_text("# my model card")
    before = snapshot(hf)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("mylm_jax.interop.export.write_weights", full)
    capsys.readouterr()
    assert main(["export", "hf", str(base), str(hf), "--overwrite"]) == 2
    assert error_line(capsys.readouterr().err) == (
        f"mylm: error: {hf}: cannot write the export (No space left on device); the earlier export there is unchanged")
    assert snapshot(hf) == before and not list(tmp_path.glob(".hf.*"))
    monkeypatch.undo()
    assert main(["export", "hf", str(base), str(hf), "--overwrite"]) == 0
    assert f"replaced the earlier export in {hf} (removed config.json" in capsys.readouterr().out
    assert (hf / "README.md").read_text() == "# my model card"  # the user's file stays


def test_export_overwrite_refuses_a_model_directory_mylm_did_not_mark(base, tmp_path, capsys):
    theirs = tmp_path / "downloaded"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"model_type": "llama"}')
    (theirs / "model.safetensors").write_bytes(b"someone else's weights")
    before = snapshot(theirs)
    assert main(["export", "hf", str(base), str(theirs), "--overwrite"]) == 2
    assert error_line(capsys.readouterr().err).startswith(
        f"mylm: error: {theirs}/config.json was not made by MyLM; refusing to delete it")
    assert snapshot(theirs) == before


# --- quickstart --------------------------------------------------------------------------------


def test_quickstart_refuses_an_unrelated_directory_before_any_work(tmp_path, capsys):
    out = tmp_path / "work"
    (out / "run" / "checkpoints").mkdir(parents=True)
    (out / "run" / "checkpoints" / "resnet_epoch90.pt").write_bytes(b"weights")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    assert main(["quickstart", "--out", str(out), "train.steps=20", "optim.warmup_steps=0"]) == 2
    assert error_line(capsys.readouterr().err) == (
        f"mylm: error: {out}/run was not made by MyLM; refusing to replace it (--out must be a new or empty "
        "directory, or an earlier quickstart's)")
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["notes.txt", "run"]
