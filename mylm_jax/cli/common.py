"""What every `mylm` command shares: the help format, the config and --quiet arguments,
the user-error types, quiet libraries.

The command-line grammar, the same in every group: inputs are positional
(`mylm tokenizer train A B ...`, `mylm data prepare A B ...`, `mylm data clean A B ...`),
config values are `section.key=value` overrides after `--config FILE`, every option's
help ends with its true default, and every long command takes `--quiet` (no progress
bar, only the final lines).
"""

from __future__ import annotations

import argparse

from mylm_jax.config import ConfigError
from mylm_jax.train.library_logs import quiet_libraries
from mylm_jax.data.errors import DataError
from mylm_jax.tokenizer.errors import TokenizerError

__all__ = ["USER_ERRORS", "HelpFormatter", "add_config_args", "add_quiet", "quiet_libraries"]

# A user's mistake: `mylm` prints its one-line message and exits with 2, no traceback.
# (StudyError is a ConfigError.)
USER_ERRORS = (ConfigError, DataError, TokenizerError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with "(default: X)", unless there is no value to show
    (None, a flag such as --quiet) or the help already says what happens without it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is argparse.SUPPRESS or action.nargs == 0:
            return text
        return super()._get_help_string(action)


def add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """--config FILE and `section.key=value` overrides, as every config-driven command takes them."""
    parser.add_argument("--config", required=required, help="YAML config file (default: the built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override config values, e.g. model.n_layers=2 optim.lr=3e-4")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """--quiet, as every long command takes it."""
    parser.add_argument("--quiet", action="store_true", help="no progress bar: print only the final lines")
