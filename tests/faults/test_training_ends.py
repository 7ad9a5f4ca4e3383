"""How a training run ends when it cannot go on as asked: a disk that fills during a
checkpoint save, and steps skipped for a non-finite loss (train.on_nonfinite=skip).

The full disk is real: a small tmpfs mounted for the test (root only; skipped elsewhere).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mylm_jax.config import config_from_dict
from mylm_jax.train import loop
from tests.train_helpers import losses, run_mylm, tiny_config

# Holds the run's small files and the first checkpoint or two of tiny_config's model
# (about 0.6 MB each), never all four: a later save finds the disk full.
SMALL_DISK = "1200k"


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (mount -t tmpfs)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_during_a_save_is_one_line_and_the_resume_matches_a_clean_run(data_path, tmp_path,
                                                                                 small_disk):
    settings = dict(steps=8, checkpoint_every=2, eval_every=0)
    run = small_disk / "run"
    result = run_mylm(["pretrain"], tiny_config(data_path, run, train=settings), tmp_path / "c.yaml")
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(result.stderr.splitlines()) == 1, result.stderr[-3000:]  # no traceback, no second error
    line = result.stderr.strip()
    assert line.startswith("mylm: error: cannot save checkpoint step ") and "(No space left on device)" in line
    committed = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert committed and f"the committed steps {', '.join(map(str, committed))} are whole" in line
    assert "continue with --resume" in line

    # Space freed: the resume continues from the newest committed step on the clean run's trajectory.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = run_mylm(["pretrain", "--resume"], tiny_config(data_path, run, train=settings), tmp_path / "c.yaml")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints'}/{committed[-1]}" in resumed.stdout
    clean = tmp_path / "clean"
    assert run_mylm(["pretrain"], tiny_config(data_path, clean, train=settings), tmp_path / "d.yaml").returncode == 0
    assert losses(run) == losses(clean) and sorted(losses(run)) == list(range(1, 9))


def _records(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_whose_last_steps_were_all_skipped_ends_with_a_summary_and_exit_3(data_path, tmp_path):
    # lr 1e9: the first update throws the weights to ~1e9, every later loss overflows and is skipped.
    cfg = tiny_config(data_path, tmp_path, optim=dict(lr=1e9, warmup_steps=0, grad_clip=0.0),
                      train=dict(on_nonfinite="skip", steps=6, eval_every=0, checkpoint_every=0))
    result = run_mylm(["pretrain"], cfg, tmp_path / "c.yaml")
    assert result.returncode == 3, result.stderr[-3000:]
    skipped = [r["step"] for r in _records(tmp_path) if r.get("skipped_nonfinite")]
    assert skipped == [2, 3, 4, 5, 6]
    assert (f"mylm: 5 of 6 steps were skipped (non-finite loss or gradient, train.on_nonfinite=skip): "
            f"steps 2 to 6 were all skipped; the newest checkpoint, {tmp_path / 'checkpoints'}/1, holds the "
            f"weights after step 1") in result.stdout
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_a_skipped_step_in_the_middle_ends_with_a_note_and_exit_0(data_path, tmp_path, monkeypatch, capsys):
    """The third batch's loss mask is NaN, so its loss is: the real step skips that update."""
    real, seen = loop.k_step_batch, []

    def third_batch_is_not_finite(batches, K):
        marked = []
        for batch in batches:
            seen.append(batch)
            marked.append({**batch, "loss_mask": batch["loss_mask"] * np.nan} if len(seen) == 3 else batch)
        return real(marked, K)

    monkeypatch.setattr(loop, "k_step_batch", third_batch_is_not_finite)
    cfg = config_from_dict(tiny_config(data_path, tmp_path, train=dict(on_nonfinite="skip", steps=6,
                                                                       eval_every=0, checkpoint_every=0)))
    assert loop.pretrain(cfg, quiet=True) == 6
    assert [r["step"] for r in _records(tmp_path) if r.get("skipped_nonfinite")] == [3]
    assert ("mylm: note: 1 of 6 steps were skipped (non-finite loss or gradient, train.on_nonfinite=skip); "
            f"the newest checkpoint is {tmp_path / 'checkpoints'}/5 (checkpoints count the 5 updates applied)"
            ) in capsys.readouterr().out
