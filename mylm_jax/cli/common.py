"""What every `mylm` command shares: the config arguments, the user-error types, quiet libraries."""

from __future__ import annotations

import argparse
import os

from mylm_jax.config import ConfigError
from mylm_jax.data.errors import DataError
from mylm_jax.tokenizer.errors import TokenizerError

# A user's mistake: `mylm` prints its one-line message and exits with 2, no traceback.
# (StudyError is a ConfigError.)
USER_ERRORS = (ConfigError, DataError, TokenizerError)


def add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """--config FILE and `section.key=value` overrides, as every config-driven command takes them."""
    parser.add_argument("--config", required=required, help="YAML config file (default: the built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override config values, e.g. model.n_layers=2 optim.lr=3e-4")


def quiet_libraries() -> None:
    """Orbax and grain log routine INFO / WARNING lines through absl; keep the terminal for
    the run's own output (MYLM_VERBOSE=1 shows them)."""
    from absl import logging
    if not os.environ.get("MYLM_VERBOSE"):
        logging.set_verbosity(logging.ERROR)
