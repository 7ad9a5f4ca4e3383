"""What training prints: a bar on a terminal, plain lines in a log file or a pipe, nothing when quiet."""

from __future__ import annotations

import io
import re

from mylm_jax.train.progress import BarProgress, LineProgress, NoProgress, make_progress
from tests.train_helpers import run_mylm, tiny_config

RECORD = {"loss": 5.4321, "loss_ema": 5.5, "lr": 3e-4, "tokens_per_s": 12345.6}


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_printer_follows_the_output():
    assert isinstance(make_progress(10, 0, 2, stream=io.StringIO()), LineProgress)
    assert isinstance(make_progress(10, 0, 2, quiet=True, stream=FakeTerminal()), NoProgress)
    bar = make_progress(10, 0, 2, stream=FakeTerminal())
    assert isinstance(bar, BarProgress)
    bar.close()


def test_lines_every_log_every_steps_and_at_the_end():
    out = io.StringIO()
    lines = make_progress(7, 0, 3, stream=out)
    for step in range(1, 8):
        lines.step(step, RECORD)
    lines.say("step 7: val_loss 5.0000")
    lines.close()
    assert out.getvalue().splitlines() == [
        "step 3/7: loss 5.4321, ema 5.5000, lr 3.00e-04, tok/s 12,346",
        "step 6/7: loss 5.4321, ema 5.5000, lr 3.00e-04, tok/s 12,346",
        "step 7/7: loss 5.4321, ema 5.5000, lr 3.00e-04, tok/s 12,346",
        "step 7: val_loss 5.0000"]


def test_pretraining_into_a_pipe_prints_plain_lines(data_path, tmp_path):
    cfg = tiny_config(data_path, tmp_path, train=dict(steps=8, log_every=2, eval_every=4, sample_every=4,
                                                      sample_tokens=4))
    result = run_mylm(["pretrain"], cfg, tmp_path / "c.yaml")  # stdout is a pipe, not a terminal
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stdout and "\r" not in result.stderr
    steps = [int(m.group(1)) for m in re.finditer(r"^step (\d+)/8: loss [\d.]+, ema [\d.]+, lr \S+, tok/s [\d,]+$",
                                                   result.stdout, re.M)]
    assert steps == [2, 4, 6, 8]
    assert re.findall(r"^step (\d+): val_loss", result.stdout, re.M) == ["4", "8"]
    assert re.findall(r"^step (\d+) sample: ", result.stdout, re.M) == ["4", "8"]
