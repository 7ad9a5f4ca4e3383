"""Quiet libraries: orbax and grain log routine INFO / WARNING lines through absl (orbax's
"read only" notices on every restore, grain's worker start-up). The `mylm` command and the
Python API call `quiet_libraries()` so the terminal and the notebook keep the run's own
output; MYLM_VERBOSE=1 shows them again."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    from absl import logging
    if not os.environ.get("MYLM_VERBOSE"):
        logging.set_verbosity(logging.ERROR)
