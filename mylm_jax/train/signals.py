"""Stopping a run cleanly: SIGTERM (a cluster's preemption notice) or Ctrl-C.

The first signal sets a flag; the loop sees it at the next step boundary, saves a
checkpoint and exits 0, so `--resume` continues exactly there. A second signal stops at
once (the previous handler runs: Ctrl-C twice always works).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field


@dataclass
class StopFlag:
    requested: str = ""  # the signal's name once one arrived
    previous: dict = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop now
            signal.signal(signum, self.previous[signum])
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
