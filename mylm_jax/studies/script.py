"""What every study script shares around its work: its error type, its command-line
arguments, its one-line failure and a memory reading.

    StudyError             a user mistake in a study's input; `mylm` and the scripts print
                           it as one line and exit 2
    fail(prog, message)    print `<prog>: error: <message>` and exit 2
    add_study_args(p, name)
                           the arguments of scripts/compare_*.py and init_study.py: model
                           size, batch, corpus, dataset cache, output directory
    peak_rss_mb()          this process's peak resident memory so far
"""

from __future__ import annotations

import sys

from mylm_jax.config import ConfigError


class StudyError(ConfigError):
    """A user mistake in a study's input; its message is one line (`mylm` prints it as one)."""


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def add_study_args(p, name: str, d_model: int = 64, layers: int = 2, seq_len: int = 64) -> None:
    """The arguments every study script shares: model size, batch, data, cache and output."""
    p.add_argument("--d-model", type=int, default=d_model)
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=seq_len)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--vocab", type=int, default=512, help="BPE vocabulary trained on the corpus")
    p.add_argument("--data", nargs="+", help="corpus files (default: ../shared/data/tinyshakespeare.txt)")
    p.add_argument("--max-chars", type=int, help="use only the corpus's first characters (tests)")
    p.add_argument("--cache", default="runs/studies/cache", help="where prepared datasets are kept")
    p.add_argument("--out", default=f"runs/studies/{name}")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (getrusage; kilobytes on Linux)."""
    import resource
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
