"""What the training loop prints while it runs: a progress bar on a terminal, plain lines
elsewhere, nothing when quiet.

A tqdm bar redraws itself with carriage returns; in a log file, in CI or through `| tee`
every redraw stays in the file, and a long run leaves megabytes of half lines. So when
the output is not a terminal the loop prints one plain line every `train.log_every`
steps instead, with the numbers the bar would show (loss, smoothed loss, lr, tokens/s),
and evaluations and samples as plain lines, as on a terminal.

Each printer has three methods: `step(step, record)` after every step (`record`: the
step's logged numbers, `Trainer._record`), `say(text)` for an eval or a sample line, and
`close()`.
"""

from __future__ import annotations

import sys
from typing import TextIO


def _numbers(record: dict) -> dict[str, str]:
    """The four numbers the bar and the lines show, formatted alike."""
    return {"loss": f"{record['loss']:.4f}", "ema": f"{record.get('loss_ema', float('nan')):.4f}",
            "lr": f"{record.get('lr', float('nan')):.2e}", "tok_s": f"{record['tokens_per_s']:,.0f}"}


class BarProgress:
    """A tqdm bar (on a terminal)."""

    def __init__(self, total: int, initial: int, stream: TextIO):
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=initial, desc="pretrain", dynamic_ncols=True, file=stream)

    def step(self, step: int, record: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(**_numbers(record), refresh=False)

    def say(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()


class LineProgress:
    """One plain line every `every` steps (and at the last step): for log files, CI, pipes."""

    def __init__(self, total: int, every: int, stream: TextIO):
        self.total, self.every, self.stream = total, every, stream

    def step(self, step: int, record: dict) -> None:
        if step % self.every == 0 or step == self.total:
            n = _numbers(record)
            self.say(f"step {step}/{self.total}: loss {n['loss']}, ema {n['ema']}, lr {n['lr']}, "
                     f"tok/s {n['tok_s']}")

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class NoProgress:
    """Quiet: nothing at all."""

    def step(self, step: int, record: dict) -> None:
        pass

    def say(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def make_progress(total: int, initial: int, log_every: int, quiet: bool = False, stream: TextIO | None = None):
    """The printer for this output: nothing if quiet, a bar on a terminal, else lines."""
    stream = sys.stdout if stream is None else stream
    if quiet:
        return NoProgress()
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return BarProgress(total, initial, stream)
    return LineProgress(total, log_every, stream)
