"""Fault injection for the tests: kill the process at a chosen moment, as a crash would.

    MYLM_TEST_KILL_AT_STEP=N       SIGKILL once step N's metrics are logged (mylm_jax/train/loop.py)
    MYLM_TEST_KILL_DURING_SAVE=N   SIGKILL right after step N's asynchronous save starts
                                   (mylm_jax/train/checkpoint.py)

tests/test_train_resume.py uses them to prove that a resume after kill -9 continues the
exact trajectory, and that a save cut short leaves the previous checkpoints intact.
Unset, they cost one environment lookup.
"""

from __future__ import annotations

import os
import signal

KILL_AT_STEP = "MYLM_TEST_KILL_AT_STEP"
KILL_DURING_SAVE = "MYLM_TEST_KILL_DURING_SAVE"


def kill_if_asked(variable: str, step: int) -> None:
    if os.environ.get(variable) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
