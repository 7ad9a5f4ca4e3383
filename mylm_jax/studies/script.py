"""What every study script shares around its work: its error type, its command-line
arguments, its one-line failure and a memory reading.

    StudyError             a user mistake in a study's input; `mylm` and the scripts print
                           it as one line and exit 2
    fail(prog, message)    print `<prog>: error: <message>` and exit 2
    add_study_args(p, name)
                           the arguments of scripts/compare_*.py and init_study.py: model
                           size, batch, corpus, dataset cache, output directory, and the
                           `section.key=value` overrides `mylm` takes
    with_overrides(cfg, overrides)
                           the study's config with those overrides applied (and validated)
    peak_rss_mb()          this process's peak resident memory so far
"""

from __future__ import annotations

import sys

from mylm_jax.config import ConfigError, apply_overrides, config_from_dict, config_to_dict

# Set by the study's own flags (the batches drawn, the tokens counted, the figures' axes
# depend on them): an override of one of these names the flag instead.
FLAG_KEYS = {"train.steps": "--steps", "train.batch_size": "--batch", "data.seq_len": "--seq-len",
             "model.max_seq_len": "--seq-len", "data.path": "--data"}


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
    p.add_argument("--out", default=f"runs/studies/{name}", help="where the results and figures go")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="override the study's config as `mylm` does, e.g. optim.weight_decay=0.0 "
                        "model.norm=layernorm (applied to every run; steps, batch, seq_len and data are flags)")


def with_overrides(cfg, overrides: list[str]):
    """cfg with the `section.key=value` overrides applied (mylm_jax.config.apply_overrides),
    validated again; a key the study sets by a flag is refused with that flag's name."""
    if not overrides:
        return cfg
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in FLAG_KEYS:
            raise StudyError(f"{key} is set by the study's {FLAG_KEYS[key]} flag; use the flag")
    return config_from_dict(apply_overrides(config_to_dict(cfg), list(overrides)))


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (getrusage; kilobytes on Linux)."""
    import resource
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
